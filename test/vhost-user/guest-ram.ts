import { MFD_CLOEXEC, dup, ftruncate, memfdCreate } from '../../src/sys';
import { GuestMemory } from '../../src/vhost-user/guest-memory';

/** Test guest RAM: one memfd per region, mapped as the back-end maps it. */
export function makeGuestMemory(regions: { gpa: number; size: number; uva?: number }[]): {
  memory: GuestMemory;
  fds: number[];
} {
  const memory = new GuestMemory();
  const fds: number[] = [];
  for (const r of regions) {
    const fd = memfdCreate('test-guest-ram', MFD_CLOEXEC);
    ftruncate(fd, r.size);
    fds.push(fd);
    memory.addRegion(
      {
        guestPhysAddr: BigInt(r.gpa),
        memorySize: BigInt(r.size),
        userspaceAddr: BigInt(r.uva ?? r.gpa + 0x7f0000000000),
        mmapOffset: 0n,
      },
      dup(fd),
    );
  }
  return { memory, fds };
}
