// Package overlayfs gives every cilo environment its own copy-on-write
// working tree of a project without ever touching the project's source
// directory.
//
// The source is captured once per source state (a git repository's HEAD
// plus its dirty and untracked files, or a fingerprint of a plain tree) as an
// immutable base snapshot, made by reflink where the filesystem can and by a
// parallel copy otherwise. Each workspace is an overlay mount whose lower
// layers are that base and whose upper layer is the workspace's own, so the
// tenth workspace of a repository costs a mount, not a copy. When the source
// changes a little, the new state becomes a thin layer holding only what
// changed, stacked on the previous base. Where overlay cannot be mounted the
// workspace is a reflink or plain copy of the base.
//
// All data lives under the root given to [New]; a file lock under that root
// makes a [Manager] safe to use from many processes at once.
package overlayfs
