// Package overlayfs gives every cilo environment its own copy-on-write
// working tree of a project without ever touching the project's source
// directory.
//
// The source is captured once per source state (a git repository's HEAD
// plus its dirty and untracked files, or a fingerprint of a plain tree) as an
// immutable base snapshot: an EROFS image written by package erofs (one
// file instead of one inode per source path, its file data reflinked from
// the source where the filesystem can), mounted read-only. Each workspace
// is an overlay mount whose lower layers are that base and whose upper
// layer is the workspace's own, so the tenth workspace of a repository
// costs a mount, not a copy. When the source changes a little, the new
// state becomes a thin layer holding only what changed (a directory),
// stacked on the previous base. Where overlay cannot be mounted the
// workspace is a reflink or plain copy of a directory snapshot of the
// base, made by reflink where the filesystem can and by a parallel copy
// otherwise; where the image cannot be mounted, the base is such a
// directory snapshot too.
//
// A new base is not flushed on Create's path: its metadata names the boot
// that wrote it until the source's watcher (or a short detached process)
// has flushed it with syncfs and marked it durable. A base still so marked
// after a reboot, or whose metadata the crash left unreadable, may be
// torn: it is never used for a new env, and an env on it cannot be
// mounted again ([ErrTornBase]).
//
// All data lives under the root given to [New]; a file lock under that root
// makes a [Manager] safe to use from many processes at once.
package overlayfs
