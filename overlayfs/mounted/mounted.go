// Package mounted tells, with system calls alone, whether a workspace can
// be used as it is. cilo's front asks it on the run path without linking
// the workspace manager (its watcher, snapshots and encoders cost start-up
// time).
package mounted

// OverlayMode is the workspace mode of an overlay mount over a base
// snapshot (overlayfs.ModeOverlay).
const OverlayMode = "overlay"
