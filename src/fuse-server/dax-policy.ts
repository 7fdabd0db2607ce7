/**
 * Which files the daemon offers a guest for DAX (FUSE_ATTR_DAX, for guests
 * mounted with `-o dax=inode`): the vocabulary of `--dax-policy`, kept free of
 * native code so that the command line parses without the addon. What each
 * policy means is in passthrough-dax.ts and docs/dax.md.
 */
export type DaxPolicy = 'inode' | 'large' | 'always' | 'never';
export const DAX_POLICIES: readonly DaxPolicy[] = ['inode', 'large', 'always', 'never'];
export const DEFAULT_DAX_POLICY: DaxPolicy = 'inode';
