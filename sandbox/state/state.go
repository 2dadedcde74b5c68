// Package state is cilo's record of every environment: one small JSON file
// per env with a schema version, changed only under an exclusive lock and
// replaced by temp file + fsync + rename, so that a reader never sees half
// a write and a crash never loses the previous state. A file per env keeps
// each change's cost independent of how many envs there are.
//
// Multi-step operations record their intent (an [Intent] on the env) before
// they touch the kernel or the disk, so that a crash at any point leaves a
// record that `cilo doctor --fix` can finish or undo.
package state

import (
	"errors"
	"net/netip"
	"time"
)

// SchemaVersion is the version of the records this build writes. A record
// with a newer version is refused rather than silently rewritten. Version
// 1 was a single state.json holding every env; Open converts it.
const SchemaVersion = 2

// ErrNotFound is wrapped by lookups of an environment that does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is wrapped when inserting an environment that already exists.
var ErrExists = errors.New("already exists")

// State is every env at one moment.
type State struct {
	Envs map[string]*Env // keyed by Key(project, name)
}

// Status of an environment.
type Status string

const (
	StatusCreating   Status = "creating"   // intent recorded, resources being made
	StatusRunning    Status = "running"    // network up; services (if any) started
	StatusStopped    Status = "stopped"    // services stopped, network and workspace kept
	StatusDestroying Status = "destroying" // intent recorded, resources being removed
)

// Env is one environment of one project.
type Env struct {
	Project string `json:"project"`
	Name    string `json:"name"`
	Status  Status `json:"status"`

	// Index is the env's /24 within the address pool; interface and
	// namespace names derive from it, so it is unique among live envs.
	Index   int          `json:"index"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	IP      netip.Addr   `json:"ip"`
	Netns   string       `json:"netns"`  // name under /run/netns
	Bridge  string       `json:"bridge"` // host bridge name

	Source        string `json:"source"`         // the user's source tree
	Workspace     string `json:"workspace"`      // where the env's copy lives
	WorkspaceMode string `json:"workspace_mode"` // overlay, reflink or copy

	// ComposeFiles and EnvFiles come from .cilo/config.yml (relative to
	// the workspace); empty means docker compose's default lookup.
	ComposeFiles []string `json:"compose_files,omitempty"`
	EnvFiles     []string `json:"env_files,omitempty"`

	Services []Service `json:"services,omitempty"`

	Intent *Intent `json:"intent,omitempty"`

	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Key is the env's key in [State.Envs].
func (e *Env) Key() string { return Key(e.Project, e.Name) }

// Key returns the canonical key of env name in project.
func Key(project, name string) string { return project + "/" + name }

// Service is one compose service of an env as the rest of cilo (DNS,
// status, ps) needs to see it.
type Service struct {
	Name      string       `json:"name"`
	Addrs     []netip.Addr `json:"addrs"`               // one per replica
	Hostnames []string     `json:"hostnames,omitempty"` // extra names (cilo.hostnames label)
	Ingress   bool         `json:"ingress,omitempty"`   // labelled cilo.ingress: "true"
	Ports     []Port       `json:"ports,omitempty"`     // published ports
}

// Port is a published port: localhost:Published inside the env reaches
// the service's Target.
type Port struct {
	Protocol  string `json:"protocol"` // tcp or udp
	Published uint16 `json:"published"`
	Target    uint16 `json:"target"`
}

// Intent records an operation in progress. PID is the process doing it; an
// intent whose process is gone was interrupted.
type Intent struct {
	Op      string    `json:"op"` // create, destroy, up, down
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
}
