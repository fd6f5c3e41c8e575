// devcluster starts a real Kubernetes control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler), metrics-server behind the aggregation layer and two
// OCI registries on loopback, for Krustlet's tests and dev cluster.
//
// Every port is chosen free at start, so clusters can run side by side. Once the API server's
// /readyz answers and the bootstrap objects exist, it prints one line
//
//	DEVCLUSTER_READY {"kubeconfig": ..., "server": ..., "registry": ..., ...}
//
// and writes the same JSON to <dir>/cluster.json. It then approves kubelet-serving CSRs of known
// nodes, as an operator's approver would. SIGTERM, SIGINT, end of standard input (with
// --stdin-lifeline) or the death of any component stops everything and removes what it made.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// info is what the ready line and cluster.json tell clients.
type info struct {
	Dir                   string `json:"dir"`
	Server                string `json:"server"`
	Kubeconfig            string `json:"kubeconfig"`
	BootstrapKubeconfig   string `json:"bootstrap_kubeconfig"`
	BootstrapToken        string `json:"bootstrap_token"`
	CAFile                string `json:"ca_file"`
	CAKeyFile             string `json:"ca_key_file"`
	KubeletClientCertFile string `json:"kubelet_client_cert_file"`
	KubeletClientKeyFile  string `json:"kubelet_client_key_file"`
	Kubectl               string `json:"kubectl"`
	Registry              string `json:"registry,omitempty"`
	RegistryDir           string `json:"registry_dir,omitempty"`
	AuthRegistry          string `json:"auth_registry,omitempty"`
	AuthRegistryDir       string `json:"auth_registry_dir,omitempty"`
	AuthRegistryUser      string `json:"auth_registry_user,omitempty"`
	AuthRegistryPassword  string `json:"auth_registry_password,omitempty"`
	MetricsServer         string `json:"metrics_server,omitempty"`
	Pid                   int    `json:"pid"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "devcluster: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	self, _ := os.Executable()
	binDir := flag.String("bin-dir", filepath.Dir(self), "directory with etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl")
	dir := flag.String("dir", "", "state directory (certs, etcd data, logs); default: a new temp dir, removed at exit")
	registryBin := flag.String("registry-bin", "docker-registry", "the distribution registry binary (Debian's docker-registry); empty to start no registry")
	lifeline := flag.Bool("stdin-lifeline", false, "stop when standard input closes (the parent died)")
	metricsServer := flag.String("metrics-server-bin", "", "metrics-server to start behind the aggregation layer; default: metrics-server next to this launcher as invoked (.bin/), else none (with a warning)")
	nodeGrace := flag.Duration("node-monitor-grace-period", 20*time.Second, "how long a node may miss heartbeats before it is marked NotReady")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *lifeline {
		lifeCtx, cancel := context.WithCancel(ctx)
		ctx = lifeCtx
		go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	}

	removeDir := false
	if *dir == "" {
		d, err := os.MkdirTemp("", "devcluster-")
		if err != nil {
			return err
		}
		*dir, removeDir = d, true
	}
	absDir, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	c := &cluster{dir: absDir, binDir: *binDir}
	defer func() {
		c.stopAll()
		if removeDir {
			_ = os.RemoveAll(absDir)
		}
	}()
	inf, err := c.start(ctx, *registryBin, *metricsServer, *nodeGrace)
	if err != nil {
		return err
	}
	data, _ := json.Marshal(inf)
	if err := writeFile(filepath.Join(absDir, "cluster.json"), append(data, '\n')); err != nil {
		return err
	}
	fmt.Printf("DEVCLUSTER_READY %s\n", data)

	go approveServingCSRs(ctx, inf.Kubeconfig, filepath.Join(absDir, "logs", "approver.log"))
	select {
	case <-ctx.Done():
		return nil
	case died := <-c.died:
		return fmt.Errorf("%s exited unexpectedly (see %s)", died, filepath.Join(absDir, "logs", died+".log"))
	}
}

type cluster struct {
	dir, binDir string
	procs       []*proc
	died        chan string
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func freePorts(n int) ([]int, error) {
	// Hold every listener until all are chosen so no port is handed out twice.
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("no free loopback port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// spawn starts a component with its output in logs/<name>.log; it is killed if we die.
func (c *cluster) spawn(name, bin string, args ...string) error {
	logFile, err := os.Create(filepath.Join(c.dir, "logs", name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(p.done)
		select {
		case c.died <- name:
		default:
		}
	}()
	c.procs = append(c.procs, p)
	return nil
}

// stopAll stops components in reverse start order: SIGTERM, then SIGKILL after 10 s.
func (c *cluster) stopAll() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	c.procs = nil
}

func randomString(n int, alphabet string) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func (c *cluster) start(ctx context.Context, registryBin, metricsServerBin string, nodeGrace time.Duration) (*info, error) {
	c.died = make(chan string, 8)
	pki, logs := filepath.Join(c.dir, "pki"), filepath.Join(c.dir, "logs")
	for _, d := range []string{pki, logs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	ports, err := freePorts(8)
	if err != nil {
		return nil, err
	}
	etcdPort, peerPort, apiPort, cmPort, schedPort, regPort, authRegPort := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6]
	metricsPort := ports[7]
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)

	// Certificates.
	ca, err := newAuthority("krustlet-dev-ca")
	if err != nil {
		return nil, err
	}
	caKey, err := ca.keyPEM()
	if err != nil {
		return nil, err
	}
	caFile, caKeyFile := filepath.Join(pki, "ca.crt"), filepath.Join(pki, "ca.key")
	if err := writeFile(caFile, ca.certPEM); err != nil {
		return nil, err
	}
	if err := writeFile(caKeyFile, caKey); err != nil {
		return nil, err
	}
	pair := func(name string, subject pkix.Name, dns []string, ips []net.IP, usage x509.ExtKeyUsage) (string, string, error) {
		certPEM, keyPEM, err := ca.issue(subject, dns, ips, usage)
		if err != nil {
			return "", "", err
		}
		cert, key := filepath.Join(pki, name+".crt"), filepath.Join(pki, name+".key")
		if err := writeFile(cert, certPEM); err != nil {
			return "", "", err
		}
		return cert, key, writeFile(key, keyPEM)
	}
	serving := x509.ExtKeyUsageServerAuth
	client := x509.ExtKeyUsageClientAuth
	apiCert, apiKey, err := pair("apiserver", pkix.Name{CommonName: "kube-apiserver"},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")}, serving)
	if err != nil {
		return nil, err
	}
	kubeletClientCert, kubeletClientKey, err := pair("apiserver-kubelet-client",
		pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}, nil, nil, client)
	if err != nil {
		return nil, err
	}
	saKey, saPub, err := serviceAccountKeys(pki)
	if err != nil {
		return nil, err
	}
	proxy, err := newFrontProxy(pki)
	if err != nil {
		return nil, err
	}
	kubeconfigFor := func(name, cn string, orgs []string) (string, error) {
		cert, key, err := pair(name, pkix.Name{CommonName: cn, Organization: orgs}, nil, nil, client)
		if err != nil {
			return "", err
		}
		path := filepath.Join(c.dir, name+".kubeconfig")
		return path, writeFile(path, []byte(kubeconfig(server, caFile, name, fmt.Sprintf("client-certificate: %s\n    client-key: %s", cert, key))))
	}
	admin, err := kubeconfigFor("admin", "kubernetes-admin", []string{"system:masters"})
	if err != nil {
		return nil, err
	}
	cmConfig, err := kubeconfigFor("controller-manager", "system:kube-controller-manager", nil)
	if err != nil {
		return nil, err
	}
	schedConfig, err := kubeconfigFor("scheduler", "system:kube-scheduler", nil)
	if err != nil {
		return nil, err
	}
	metricsConfig, err := kubeconfigFor("metrics-server", "system:metrics-server", nil)
	if err != nil {
		return nil, err
	}
	tokenID := randomString(6, "abcdefghijklmnopqrstuvwxyz0123456789")
	tokenSecret := randomString(16, "abcdefghijklmnopqrstuvwxyz0123456789")
	bootstrapConfig := filepath.Join(c.dir, "bootstrap.kubeconfig")
	if err := writeFile(bootstrapConfig, []byte(kubeconfig(server, caFile, "kubelet-bootstrap", "token: "+tokenID+"."+tokenSecret))); err != nil {
		return nil, err
	}

	// Every write a node makes goes to audit.log, so a benchmark can count a node's API writes
	// per pod by verb and resource; nothing else is logged (reads and other clients cost nothing).
	auditPolicy := filepath.Join(c.dir, "audit-policy.yaml")
	if err := writeFile(auditPolicy, []byte(nodeWritesAuditPolicy)); err != nil {
		return nil, err
	}

	bin := func(name string) string { return filepath.Join(c.binDir, name) }
	if err := c.spawn("etcd", bin("etcd"),
		"--name=devcluster", "--data-dir="+filepath.Join(c.dir, "etcd"),
		fmt.Sprintf("--listen-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--advertise-client-urls=http://127.0.0.1:%d", etcdPort),
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", peerPort),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", peerPort),
		fmt.Sprintf("--initial-cluster=devcluster=http://127.0.0.1:%d", peerPort),
		"--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=4294967296"); err != nil {
		return nil, err
	}
	if err := c.spawn("kube-apiserver", bin("kube-apiserver"), append(proxy.apiserverFlags(),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--tls-cert-file="+apiCert, "--tls-private-key-file="+apiKey, "--client-ca-file="+caFile,
		"--service-account-key-file="+saPub, "--service-account-signing-key-file="+saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction,ServiceAccount",
		"--enable-bootstrap-token-auth=true", "--allow-privileged=true",
		"--kubelet-client-certificate="+kubeletClientCert, "--kubelet-client-key="+kubeletClientKey,
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--audit-policy-file="+auditPolicy, "--audit-log-path="+filepath.Join(c.dir, "audit.log"),
		"--service-cluster-ip-range=10.0.0.0/24", "--cert-dir="+pki, "--profiling=false", "--v=1")...); err != nil {
		return nil, err
	}
	if err := waitReady(ctx, server, caFile, c.died); err != nil {
		return nil, err
	}
	if err := c.spawn("kube-controller-manager", bin("kube-controller-manager"),
		"--kubeconfig="+cmConfig, "--authentication-kubeconfig="+cmConfig, "--authorization-kubeconfig="+cmConfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", cmPort), "--leader-elect=false",
		"--cluster-signing-cert-file="+caFile, "--cluster-signing-key-file="+caKeyFile,
		"--root-ca-file="+caFile, "--service-account-private-key-file="+saKey,
		"--use-service-account-credentials=true", "--controllers=*,bootstrapsigner,tokencleaner",
		"--node-monitor-grace-period="+nodeGrace.String(), "--node-monitor-period=2s",
		// Node podCIDRs for CNI (the e2e test hosts' and ./dev's bridge networks), as kubeadm's
		// --pod-network-cidr sets them.
		"--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--concurrent-deployment-syncs=10", "--profiling=false", "--v=1"); err != nil {
		return nil, err
	}
	if err := c.spawn("kube-scheduler", bin("kube-scheduler"),
		"--kubeconfig="+schedConfig, "--authentication-kubeconfig="+schedConfig, "--authorization-kubeconfig="+schedConfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", schedPort), "--leader-elect=false",
		"--profiling=false", "--v=1"); err != nil {
		return nil, err
	}
	if err := bootstrapObjects(ctx, admin, tokenID, tokenSecret); err != nil {
		return nil, fmt.Errorf("creating bootstrap token and RBAC: %w", err)
	}
	metricsServer := ""
	if metricsServerBin == "" {
		// The launcher is shared by clones (it lives in the control plane's cache dir), so
		// look beside the link it was started through: <repo>/.bin/metrics-server.
		candidate := filepath.Join(filepath.Dir(os.Args[0]), "metrics-server")
		if _, err := os.Stat(candidate); err == nil {
			metricsServerBin = candidate
		} else {
			fmt.Fprintf(os.Stderr, "devcluster: no metrics-server at %s (build it with test/cluster/build.sh): kubectl top will not work\n", candidate)
		}
	}
	if metricsServerBin != "" {
		if _, err := os.Stat(metricsServerBin); err != nil {
			return nil, fmt.Errorf("prerequisite missing: %s (build it with test/cluster/build.sh): %w", metricsServerBin, err)
		}
		if err := metricsServerObjects(ctx, admin, metricsPort); err != nil {
			return nil, fmt.Errorf("registering metrics-server with the aggregation layer: %w", err)
		}
		if err := c.spawn("metrics-server", metricsServerBin,
			metricsServerFlags(metricsConfig, caFile, filepath.Join(c.dir, "metrics-server"), metricsPort)...); err != nil {
			return nil, err
		}
		metricsServer = fmt.Sprintf("https://127.0.0.1:%d", metricsPort)
	}

	inf := &info{
		Dir: c.dir, Server: server, Kubeconfig: admin, BootstrapKubeconfig: bootstrapConfig,
		BootstrapToken: tokenID + "." + tokenSecret, CAFile: caFile, CAKeyFile: caKeyFile,
		KubeletClientCertFile: kubeletClientCert, KubeletClientKeyFile: kubeletClientKey,
		Kubectl: bin("kubectl"), MetricsServer: metricsServer, Pid: os.Getpid(),
	}
	if registryBin != "" {
		if inf.Registry, inf.RegistryDir, err = c.startRegistry("registry", registryBin, regPort, ""); err != nil {
			return nil, err
		}
		inf.AuthRegistryUser, inf.AuthRegistryPassword = "krustlet", randomString(20, "abcdefghijklmnopqrstuvwxyz0123456789")
		hash, err := bcrypt.GenerateFromPassword([]byte(inf.AuthRegistryPassword), bcrypt.DefaultCost)
		if err != nil {
			return nil, err
		}
		htpasswd := filepath.Join(c.dir, "auth-registry.htpasswd")
		if err := writeFile(htpasswd, []byte(inf.AuthRegistryUser+":"+string(hash)+"\n")); err != nil {
			return nil, err
		}
		if inf.AuthRegistry, inf.AuthRegistryDir, err = c.startRegistry("auth-registry", registryBin, authRegPort, htpasswd); err != nil {
			return nil, err
		}
	}
	return inf, nil
}

func kubeconfig(server, caFile, user, credentials string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: devcluster
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    %s
contexts:
- name: devcluster
  context:
    cluster: devcluster
    user: %s
current-context: devcluster
`, server, caFile, user, credentials, user)
}

// startRegistry runs a distribution registry on a loopback port, storage in the state dir.
func (c *cluster) startRegistry(name, bin string, port int, htpasswd string) (addr, storage string, err error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return "", "", fmt.Errorf("prerequisite missing: %s (apt-get install docker-registry): %w", bin, err)
	}
	storage = filepath.Join(c.dir, name)
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	auth := ""
	if htpasswd != "" {
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: krustlet-dev\n    path: %s\n", htpasswd)
	}
	config := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n  secret: %s\n%s",
		storage, addr, hex.EncodeToString([]byte(randomString(16, "abcdef0123456789"))), auth)
	configFile := filepath.Join(c.dir, name+".yml")
	if err := writeFile(configFile, []byte(config)); err != nil {
		return "", "", err
	}
	if err := c.spawn(name, path, "serve", configFile); err != nil {
		return "", "", err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return addr, storage, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return "", "", fmt.Errorf("%s did not answer on %s (see %s)", name, addr, filepath.Join(c.dir, "logs", name+".log"))
}

// waitReady polls the API server's /readyz with the admin credentials.
func waitReady(ctx context.Context, server, caFile string, died chan string) error {
	pki := filepath.Dir(caFile)
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "admin.crt"), filepath.Join(pki, "admin.key"))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	deadline := time.Now().Add(3 * time.Minute)
	lastErr := errors.New("no answer yet")
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case name := <-died:
			return fmt.Errorf("%s exited while the API server was starting", name)
		case <-time.After(200 * time.Millisecond):
		}
		resp, err := client.Get(server + "/readyz")
		if err != nil {
			lastErr = err
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		lastErr = fmt.Errorf("readyz %d: %s", resp.StatusCode, lastLine(string(body)))
	}
	return fmt.Errorf("API server not ready after 3 minutes: %v", lastErr)
}

func lastLine(s string) string {
	var last string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" {
			last = t
		}
	}
	return last
}

// nodeWritesAuditPolicy logs the writes of every node (group system:nodes), once each when the
// response is complete, with metadata only.
const nodeWritesAuditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  userGroups: ["system:nodes"]
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`
