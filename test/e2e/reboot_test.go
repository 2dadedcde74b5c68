package e2e

import (
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/cilo-dev/cilo/nsnet/nsfs"
)

// TestRunRestoresEnvAfterReboot removes what a reboot removes (the
// namespace, the bridge, the workspace mount) and expects cilo run to
// bring the env back with the same address and its workspace changes.
func TestRunRestoresEnvAfterReboot(t *testing.T) {
	w := newWorld(t, 24)
	w.mustCilo("run", "-e", "boot", "--", "sh", "-c", "echo kept > survived.txt")
	before := w.status("boot")

	w.stopRun(dnsPIDFile)
	must(t, syscall.Unmount(before.Workspace, syscall.MNT_DETACH))
	must(t, nsfs.Delete(before.Netns))
	br, err := netlink.LinkByName(w.prefix + "b0")
	must(t, err)
	must(t, netlink.LinkDel(br))

	out := w.mustCilo("run", "-e", "boot", "--", "sh", "-c", "cat survived.txt README; echo $CILO_IP")
	if got := strings.Fields(out); len(got) != 3 || got[0] != "kept" || got[1] != "hello" || got[2] != before.IP {
		t.Fatalf("after reboot: %q; want the env's own file, the source file and address %s", out, before.IP)
	}
	if after := w.status("boot"); after.Subnet != before.Subnet || after.Workspace != before.Workspace {
		t.Fatalf("env changed over the reboot: %+v -> %+v", before, after)
	}
}
