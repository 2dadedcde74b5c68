// Package compose runs an env's Docker Compose services through containerd,
// so that a compose file written for `docker compose up` runs unchanged in
// many envs at once.
//
// compose-go loads the project from the env's workspace (so relative bind
// mounts and build contexts are that env's copy). Each service replica
// gets its own network namespace on the env's bridge with a stable address,
// a generated /etc/hosts and /etc/resolv.conf, and a containerd container
// and task in cilo's containerd namespace, labelled like docker compose
// labels its containers. Published ports are never bound on the host:
// nsnet forwards localhost:<published> inside the env to the service.
// Containers carry their restart policy in a label; the restart supervisor
// (package supervise), which Up starts on demand, restarts them through
// [Engine.RestartTask] after the CLI exits. Logs go to one file per
// service.
package compose
