// coredns, the light form: CoreDNS's own server (core/dnsserver, started by coremain exactly as
// upstream's main does) with only the plugins a cluster DNS needs, instead of CoreDNS's full
// plugin bundle (core/plugin), whose cloud backends (route53, azure, clouddns, ...) pull in the
// cloud SDKs. The plugins below cover the stock Kubernetes Corefile (kubeadm's CoreDNS
// ConfigMap: errors, health, ready, kubernetes, prometheus, forward, cache, loop, reload,
// loadbalance) plus log and hosts.
package main

import (
	"fmt"
	"os"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics" // the "prometheus" directive
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The directives are the plugins' execution order. Upstream's list (core/dnsserver's generated
// zdirectives.go, from plugin.cfg) names every plugin of the full bundle; keep exactly the ones
// this binary registers (those above, and the few they import themselves: debug, dnstap,
// metadata), in upstream's order, so the order stays upstream's when CoreDNS is upgraded and a
// Corefile naming a plugin that this build lacks fails as an unknown directive (and -plugins
// lists what is really there). This init runs after every imported package's, so all the
// plugins are registered by then; coremain's server type reads Directives when it starts.
func init() {
	var registered []string
	for _, d := range dnsserver.Directives {
		if _, err := caddy.DirectiveAction("dns", d); err == nil {
			registered = append(registered, d)
		}
	}
	if err := dnsserver.SetDirectives(registered); err != nil {
		fmt.Fprintln(os.Stderr, "coredns:", err)
		os.Exit(1)
	}
}

func main() {
	coremain.Run()
}
