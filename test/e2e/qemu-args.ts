// The QEMU command line both e2e boots use (qemu-guest.ts: QEMU 7.2 and
// vhost-user-fs-pci; dax-qemu.ts: QEMU 11.1 and vhost-user-test-device-pci):
// a direct-kernel TCG guest with 2 vCPUs in 512 MiB of shared memory, one
// vhost-user chardev, the serial console on standard output and no network.

/** The chardev every vhost-user device here is attached to. */
export const CHARDEV_ID = 'char0';
const GUEST_RAM = '512M';
const VCPUS = 2;

export interface QemuGuest {
  /** -accel (TCG and its options). */
  accel: string;
  /** -cpu model and feature changes. */
  cpu: string;
  /** The vhost-user back-end's socket. */
  socketPath: string;
  /** The virtio device on the chardev: its driver and properties (chardev= is added). */
  device: { driver: string; props: string[] };
  kernel: string;
  /** No initramfs when absent. */
  initrd?: string;
  /** Workload mode, e2e.mode= on the kernel command line. */
  mode: string;
  /** More kernel command line words. */
  append?: string[];
  /** Let the guest reboot (drops -no-reboot); a power-off still ends QEMU. */
  allowReboot?: boolean;
}

export function qemuGuestArgs(g: QemuGuest): string[] {
  return [
    '-accel',
    g.accel,
    '-cpu',
    g.cpu,
    '-smp',
    String(VCPUS),
    '-m',
    GUEST_RAM,
    // Guest RAM must be shared memory, or the back-end cannot map it.
    '-object',
    `memory-backend-memfd,id=mem,size=${GUEST_RAM},share=on`,
    '-numa',
    'node,memdev=mem',
    '-chardev',
    `socket,id=${CHARDEV_ID},path=${g.socketPath}`,
    '-device',
    [g.device.driver, `chardev=${CHARDEV_ID}`, ...g.device.props].join(','),
    '-kernel',
    g.kernel,
    ...(g.initrd === undefined ? [] : ['-initrd', g.initrd]),
    // panic=-1: a guest kernel panic reboots at once, which ends QEMU
    // (-no-reboot) instead of waiting for the timeout.
    // Not "quiet": when a boot hangs, the console shows how far the kernel got.
    '-append',
    ['console=ttyS0', 'panic=-1', `e2e.mode=${g.mode}`, ...(g.append ?? [])].join(' '),
    '-nographic',
    ...(g.allowReboot ? [] : ['-no-reboot']),
    '-nic',
    'none',
  ];
}
