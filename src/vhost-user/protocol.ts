/**
 * vhost-user protocol constants, named as in QEMU's docs/interop/vhost-user.rst.
 */

/** Front-end -> back-end requests. */
export enum FrontendRequest {
  GET_FEATURES = 1,
  SET_FEATURES = 2,
  SET_OWNER = 3,
  RESET_OWNER = 4,
  SET_MEM_TABLE = 5,
  SET_LOG_BASE = 6,
  SET_LOG_FD = 7,
  SET_VRING_NUM = 8,
  SET_VRING_ADDR = 9,
  SET_VRING_BASE = 10,
  GET_VRING_BASE = 11,
  SET_VRING_KICK = 12,
  SET_VRING_CALL = 13,
  SET_VRING_ERR = 14,
  GET_PROTOCOL_FEATURES = 15,
  SET_PROTOCOL_FEATURES = 16,
  GET_QUEUE_NUM = 17,
  SET_VRING_ENABLE = 18,
  SEND_RARP = 19,
  NET_SET_MTU = 20,
  SET_BACKEND_REQ_FD = 21,
  IOTLB_MSG = 22,
  SET_VRING_ENDIAN = 23,
  GET_CONFIG = 24,
  SET_CONFIG = 25,
  CREATE_CRYPTO_SESSION = 26,
  CLOSE_CRYPTO_SESSION = 27,
  POSTCOPY_ADVISE = 28,
  POSTCOPY_LISTEN = 29,
  POSTCOPY_END = 30,
  GET_INFLIGHT_FD = 31,
  SET_INFLIGHT_FD = 32,
  GPU_SET_SOCKET = 33,
  RESET_DEVICE = 34,
  VRING_KICK = 35,
  GET_MAX_MEM_SLOTS = 36,
  ADD_MEM_REG = 37,
  REM_MEM_REG = 38,
  SET_STATUS = 39,
  GET_STATUS = 40,
  GET_SHARED_OBJECT = 41,
  SET_DEVICE_STATE_FD = 42,
  CHECK_DEVICE_STATE = 43,
  GET_SHMEM_CONFIG = 44,
}

/** Back-end -> front-end requests on the back-end channel. */
export enum BackendRequest {
  IOTLB_MSG = 1,
  CONFIG_CHANGE_MSG = 2,
  VRING_HOST_NOTIFIER_MSG = 3,
  VRING_CALL = 4,
  VRING_ERR = 5,
  SHARED_OBJECT_ADD = 6,
  SHARED_OBJECT_REMOVE = 7,
  SHARED_OBJECT_LOOKUP = 8,
  SHMEM_MAP = 9,
  SHMEM_UNMAP = 10,
}

/** Bit numbers of VHOST_USER_PROTOCOL_F_*. */
export enum ProtocolFeature {
  MQ = 0,
  LOG_SHMFD = 1,
  RARP = 2,
  REPLY_ACK = 3,
  NET_MTU = 4,
  BACKEND_REQ = 5,
  CROSS_ENDIAN = 6,
  CRYPTO_SESSION = 7,
  PAGEFAULT = 8,
  CONFIG = 9,
  BACKEND_SEND_FD = 10,
  HOST_NOTIFIER = 11,
  INFLIGHT_SHMFD = 12,
  RESET_DEVICE = 13,
  INBAND_NOTIFICATIONS = 14,
  CONFIGURE_MEM_SLOTS = 15,
  STATUS = 16,
  XEN_MMAP = 17,
  SHARED_OBJECT = 18,
  DEVICE_STATE = 19,
  SHMEM = 22,
}

/** Virtio feature bits relevant to a vhost-user-fs device. */
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
export const VIRTIO_RING_F_EVENT_IDX = 29;
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;
export const VIRTIO_F_VERSION_1 = 32;

/** Header flags: version in bits 0-1, REPLY bit 2, NEED_REPLY bit 3. */
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_VERSION_MASK = 0x3;
export const VHOST_USER_REPLY_MASK = 0x1 << 2;
export const VHOST_USER_NEED_REPLY_MASK = 0x1 << 3;

export const HEADER_SIZE = 12;
/** Largest payload we accept; anything longer is a protocol violation. */
export const MAX_PAYLOAD_SIZE = 4096 + 256 * 8;
/** SET_MEM_TABLE carries at most this many regions (VHOST_MEMORY_BASELINE_NREGIONS). */
export const MEMORY_BASELINE_NREGIONS = 8;
/**
 * Slots offered through GET_MAX_MEM_SLOTS with CONFIGURE_MEM_SLOTS: QEMU's own
 * limit (VHOST_USER_MAX_RAM_SLOTS). QEMU 11.1 forwards every live DAX mapping
 * as one more region (ADD_MEM_REG), so the window needs as many as it can get.
 */
export const MAX_MEM_SLOTS = 512;
/** GET_CONFIG / SET_CONFIG carry at most this many bytes of device config (VHOST_USER_MAX_CONFIG_SIZE). */
export const VHOST_USER_MAX_CONFIG_SIZE = 256;
/** virtio-fs device config (virtio spec 5.11.4): u8 tag[36], le32 num_request_queues. */
export const VIRTIO_FS_TAG_SIZE = 36;
export const VIRTIO_FS_CONFIG_SIZE = VIRTIO_FS_TAG_SIZE + 4;

/** SET_VRING_KICK/CALL/ERR payload: queue index in bits 0-7, bit 8 = no fd. */
export const VRING_IDX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x1 << 8;

/** VHOST_USER_SHMEM_MAP flags. */
export const SHMEM_MAP_FLAG_WRITABLE = 0x1n;
/** GET_SHMEM_CONFIG reply: u32 nregions, u32 padding, u64 size[MAX_SHMEM_REGIONS]. */
export const MAX_SHMEM_REGIONS = 256;

export function bit(n: number): bigint {
  return 1n << BigInt(n);
}
