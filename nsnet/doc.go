// Package nsnet does cilo's kernel networking: the address pool, one bridge
// and one persistent network namespace per environment joined by a veth
// pair, the namespaces of compose services on that bridge, and the nftables
// rules that isolate environments from each other, masquerade their egress
// and forward localhost ports inside them.
//
// Everything goes through netlink (github.com/vishvananda/netlink,
// github.com/google/nftables) and x/sys/unix; nothing shells out to ip or
// nft. Every object it creates carries the configured name prefix, so that
// cilo can find its own objects and never touches anything else.
package nsnet
