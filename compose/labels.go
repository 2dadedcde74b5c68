package compose

// Labels on every container cilo creates. The com.docker.compose.* ones
// are what docker compose sets, so tools that know them (nerdctl ps, ctr c
// ls, dashboards) show cilo's containers the same way.
const (
	labelProject   = "cilo.project" // the cilo project (state.Env.Project)
	labelEnv       = "cilo.env"
	labelService   = "cilo.service"
	labelReplica   = "cilo.replica"
	labelAddr      = "cilo.addr"
	labelNetns     = "cilo.netns"
	labelVeth      = "cilo.veth"
	labelHash      = "cilo.config-hash"
	labelLog       = "cilo.log"
	labelStopSig   = "cilo.stop-signal"
	labelStopGrace = "cilo.stop-grace-period"
	labelRunDir    = "cilo.rundir"
	labelPorts     = "cilo.ports"       // JSON []state.Port, published inside the env
	labelHealth    = "cilo.healthcheck" // JSON healthLabel, for ps

	composeProject    = "com.docker.compose.project"
	composeService    = "com.docker.compose.service"
	composeNumber     = "com.docker.compose.container-number"
	composeOneoff     = "com.docker.compose.oneoff"
	composeHash       = "com.docker.compose.config-hash"
	composeWorkingDir = "com.docker.compose.project.working_dir"
	composeFilesLabel = "com.docker.compose.project.config_files"
	composeVersion    = "com.docker.compose.version"
	composeImage      = "com.docker.compose.image"

	nerdctlName     = "nerdctl/name"
	nerdctlHostname = "nerdctl/hostname"
)
