package main

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
)

// The aggregation layer, as kubeadm configures it: the API server proxies /apis/metrics.k8s.io
// to metrics-server with a front-proxy client certificate, and metrics-server trusts the user
// named in the request headers because that certificate is signed by the front-proxy CA.
type frontProxy struct {
	caFile, clientCert, clientKey string
}

// apiserverFlags are kube-apiserver's requestheader and proxy-client flags (kubeadm's).
func (f frontProxy) apiserverFlags() []string {
	return []string{
		"--requestheader-client-ca-file=" + f.caFile,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + f.clientCert,
		"--proxy-client-key-file=" + f.clientKey,
	}
}

// newFrontProxy writes the front-proxy CA and the API server's front-proxy client pair.
func newFrontProxy(pki string) (frontProxy, error) {
	ca, err := newAuthority("front-proxy-ca")
	if err != nil {
		return frontProxy{}, err
	}
	f := frontProxy{
		caFile:     filepath.Join(pki, "front-proxy-ca.crt"),
		clientCert: filepath.Join(pki, "front-proxy-client.crt"),
		clientKey:  filepath.Join(pki, "front-proxy-client.key"),
	}
	if err := writeFile(f.caFile, ca.certPEM); err != nil {
		return f, err
	}
	cert, key, err := ca.issue(pkix.Name{CommonName: "front-proxy-client"}, nil, nil, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return f, err
	}
	if err := writeFile(f.clientCert, cert); err != nil {
		return f, err
	}
	return f, writeFile(f.clientKey, key)
}

// metricsServerFlags runs metrics-server as a host process on loopback: it scrapes each node's
// /metrics/resource at the node's InternalIP and kubelet port (from the Node status), verifying
// the serving certificates against the cluster CA, every 10 s (its minimum resolution; the
// request timeout must be shorter).
func metricsServerFlags(kubeconfig, caFile, certDir string, port int) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + certDir,
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--kubelet-use-node-status-port",
		"--kubelet-certificate-authority=" + caFile,
		"--metric-resolution=10s", "--kubelet-request-timeout=5s",
		"--v=1",
	}
}

// metricsServerObjects registers metrics-server with the aggregation layer: the RBAC of
// upstream's manifests (components.yaml), a Service of type ExternalName pointing at loopback
// and the APIService v1beta1.metrics.k8s.io.
//
// With --enable-aggregator-routing=false (the default) the aggregator resolves an APIService's
// Service with proxy.ResolveCluster (k8s.io/apiserver/pkg/util/proxy), which for an ExternalName
// Service dials <externalName>:<APIService port> and, unlike the node and service proxies,
// does not refuse loopback; a ClusterIP would need kube-proxy, which this cluster has not.
func metricsServerObjects(ctx context.Context, kubeconfig string, port int) error {
	cs, err := clientFor(kubeconfig)
	if err != nil {
		return err
	}
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(config)
	if err != nil {
		return err
	}
	const user = "system:metrics-server"
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes/metrics"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"pods", "nodes"}, Verbs: []string{"get", "list", "watch"}},
		},
	}
	userSubject := []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: user}}
	clusterBindings := []*rbacv1.ClusterRoleBinding{
		{
			ObjectMeta: metav1.ObjectMeta{Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: user},
			Subjects:   userSubject,
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "metrics-server:system:auth-delegator"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:auth-delegator"},
			Subjects:   userSubject,
		},
	}
	reader := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "metrics-server-auth-reader", Namespace: "kube-system"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "extension-apiserver-authentication-reader"},
		Subjects:   userSubject,
	}
	service := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "metrics-server", Namespace: "kube-system"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost"},
	}
	apiService := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1",
		"kind":       "APIService",
		"metadata":   map[string]any{"name": "v1beta1.metrics.k8s.io"},
		"spec": map[string]any{
			"group": "metrics.k8s.io", "version": "v1beta1",
			"groupPriorityMinimum": int64(100), "versionPriority": int64(100),
			"service": map[string]any{"namespace": "kube-system", "name": "metrics-server", "port": int64(port)},
			// metrics-server's own self-signed serving certificate, as upstream's manifests.
			"insecureSkipTLSVerify": true,
		},
	}}
	apiServices := dyn.Resource(schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"})
	create := func(err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		return nil
	}
	deadline := time.Now().Add(time.Minute)
	for {
		err = create(func() error {
			_, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
			return err
		}())
		for _, b := range clusterBindings {
			if err == nil {
				_, e := cs.RbacV1().ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{})
				err = create(e)
			}
		}
		if err == nil {
			_, e := cs.RbacV1().RoleBindings("kube-system").Create(ctx, reader, metav1.CreateOptions{})
			err = create(e)
		}
		if err == nil {
			_, e := cs.CoreV1().Services("kube-system").Create(ctx, service, metav1.CreateOptions{})
			err = create(e)
		}
		if err == nil {
			_, e := apiServices.Create(ctx, apiService, metav1.CreateOptions{})
			err = create(e)
		}
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}
