/**
 * The only door to syscalls Node lacks. Nothing above this module touches koffi
 * or the native addon directly.
 */
export * from './errno';
export * from './libc';
export * from './memory';
export * from './fd-watcher';
export * from './unix-socket';
export { addon } from './native';
export * from './fs';
