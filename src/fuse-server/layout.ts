// The struct layouts moved to src/layout.ts (shared with vhost-user and src/sys); this keeps the guest client's imports.
export * from '../layout';
