// Package dns is cilo's embedded DNS server. It answers for every
// environment's names under the configured suffix (`db.dev.test`,
// `shop.dev.test`, the canonical `db.dev.shop.test`, bare `db` inside an
// env) straight from cilo's state records, and forwards every other name to the
// host's own upstream resolvers.
//
// The server exists because the seed's dnsmasq setup had to be rewritten and
// restarted for every env change; here the zone is an immutable value
// rebuilt from the state records on each change (inotify) and swapped
// atomically, so a new env answers within milliseconds and a destroyed one
// stops answering as fast, with no restart and no signal.
//
// The parts are kept apart so each can be tested alone:
//   - [Zone]: names to addresses, built by [NewZone] from state envs.
//   - [Handler]: a miekg/dns handler answering from a [Zone] and forwarding
//     through a [Forwarder]; tested in-process with a recorder.
//   - [Server]: the UDP and TCP listeners, the host one and one per env
//     gateway, added and removed as zones change, plus a packed-response
//     cache that keeps the hot path allocation-free.
//   - [StateSource]: the small adapter from the state records to zones.
//   - [Serve], [Launcher], [Init], [GetStatus]: the daemon, starting it on
//     demand, installing it and the host resolver setup, and its health.
package dns
