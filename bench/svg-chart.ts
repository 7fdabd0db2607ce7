/**
 * A grouped bar chart as plain SVG (no plotting dependency): one group per
 * category, one bar per series, a log-scale y axis (throughputs span decades).
 */
export interface Series {
  name: string;
  values: (number | null)[];
}

const COLORS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948'];

export function groupedBarChart(title: string, categories: string[], series: Series[], yLabel: string): string {
  const width = 920;
  const height = 420;
  const m = { top: 40, right: 20, bottom: 90, left: 70 };
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const all = series.flatMap((s) => s.values).filter((v): v is number => v !== null && v > 0);
  const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...all))));
  const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...all))));
  const y = (v: number) => m.top + plotH - ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * plotH;
  const groupW = plotW / categories.length;
  const barW = (groupW * 0.8) / series.length;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">${escape(title)}</text>`,
  ];
  for (let d = lo; d <= hi; d *= 10) {
    out.push(`<line x1="${m.left}" x2="${width - m.right}" y1="${y(d)}" y2="${y(d)}" stroke="#ddd"/>`);
    out.push(`<text x="${m.left - 6}" y="${y(d) + 4}" text-anchor="end">${d >= 1 ? d : d.toFixed(2)}</text>`);
  }
  out.push(`<text transform="translate(16 ${m.top + plotH / 2}) rotate(-90)" text-anchor="middle">${escape(yLabel)}</text>`);
  categories.forEach((c, i) => {
    const gx = m.left + i * groupW + groupW * 0.1;
    series.forEach((s, j) => {
      const v = s.values[i];
      if (v === null || v <= 0) return;
      const top = y(Math.max(v, lo));
      out.push(
        `<rect x="${gx + j * barW}" y="${top}" width="${barW - 1}" height="${m.top + plotH - top}" fill="${COLORS[j % COLORS.length]}"/>`,
      );
    });
    out.push(`<text transform="translate(${gx + groupW * 0.4} ${m.top + plotH + 12}) rotate(35)" text-anchor="start">${escape(c)}</text>`);
  });
  series.forEach((s, j) => {
    const lx = m.left + j * 190;
    out.push(`<rect x="${lx}" y="${height - 18}" width="12" height="12" fill="${COLORS[j % COLORS.length]}"/>`);
    out.push(`<text x="${lx + 16}" y="${height - 8}">${escape(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}

function escape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
