package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The group kubeadm gives its default node bootstrap tokens; the RBAC below is kubeadm's.
const bootstrapGroup = "system:bootstrappers:kubeadm:default-node-token"

func clientFor(kubeconfig string) (*kubernetes.Clientset, error) {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	config.UserAgent = "devcluster"
	return kubernetes.NewForConfig(config)
}

// bootstrapObjects creates the bootstrap token secret and the ClusterRoleBindings that let a
// kubelet bootstrap: create a CSR with the token, have it auto-approved by the csrapproving
// controller, and later renew its own client certificate (as `kubeadm init` sets them up).
func bootstrapObjects(ctx context.Context, kubeconfig, tokenID, tokenSecret string) error {
	cs, err := clientFor(kubeconfig)
	if err != nil {
		return err
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + tokenID, Namespace: "kube-system"},
		Type:       corev1.SecretTypeBootstrapToken,
		StringData: map[string]string{
			"token-id":                       tokenID,
			"token-secret":                   tokenSecret,
			"usage-bootstrap-authentication": "true",
			"usage-bootstrap-signing":        "true",
			"auth-extra-groups":              bootstrapGroup,
			"description":                    "devcluster node bootstrap token",
		},
	}
	bindings := []*rbacv1.ClusterRoleBinding{
		binding("kubeadm:kubelet-bootstrap", "system:node-bootstrapper", bootstrapGroup),
		binding("kubeadm:node-autoapprove-bootstrap", "system:certificates.k8s.io:certificatesigningrequests:nodeclient", bootstrapGroup),
		binding("kubeadm:node-autoapprove-certificate-rotation", "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", "system:nodes"),
	}
	// The API server may still be creating its own bootstrap RBAC; retry briefly.
	deadline := time.Now().Add(time.Minute)
	for {
		err = createAll(ctx, cs, secret, bindings)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func binding(name, role, group string) *rbacv1.ClusterRoleBinding {
	return &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: group}},
	}
}

func createAll(ctx context.Context, cs *kubernetes.Clientset, secret *corev1.Secret, bindings []*rbacv1.ClusterRoleBinding) error {
	if _, err := cs.CoreV1().Secrets("kube-system").Create(ctx, secret, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	for _, b := range bindings {
		if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

// approveServingCSRs approves kubernetes.io/kubelet-serving CSRs the way an operator's approver
// does: only from a node's own identity (system:node:<name> in group system:nodes), for a Node
// object that exists, with SANs limited to that node's name and addresses. Kubernetes itself
// never auto-approves serving certificates.
func approveServingCSRs(ctx context.Context, kubeconfig, logPath string) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return
	}
	defer logFile.Close()
	logger := log.New(logFile, "", log.LstdFlags)
	cs, err := clientFor(kubeconfig)
	if err != nil {
		logger.Printf("no client: %v", err)
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		list, err := cs.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for i := range list.Items {
			csr := &list.Items[i]
			if csr.Spec.SignerName != certificatesv1.KubeletServingSignerName || decided(csr) {
				continue
			}
			reason := servingCSRProblem(ctx, cs, csr)
			if reason != "" {
				logger.Printf("not approving %s: %s", csr.Name, reason)
				continue
			}
			csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
				Type: certificatesv1.CertificateApproved, Status: corev1.ConditionTrue,
				Reason: "DevClusterApprover", Message: "serving certificate for a known node, approved by devcluster",
			})
			if _, err := cs.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{}); err != nil {
				logger.Printf("approving %s: %v", csr.Name, err)
			} else {
				logger.Printf("approved %s for %s", csr.Name, csr.Spec.Username)
			}
		}
	}
}

func decided(csr *certificatesv1.CertificateSigningRequest) bool {
	for _, c := range csr.Status.Conditions {
		if c.Type == certificatesv1.CertificateApproved || c.Type == certificatesv1.CertificateDenied {
			return true
		}
	}
	return false
}

func servingCSRProblem(ctx context.Context, cs *kubernetes.Clientset, csr *certificatesv1.CertificateSigningRequest) string {
	nodeName, ok := strings.CutPrefix(csr.Spec.Username, "system:node:")
	if !ok || !contains(csr.Spec.Groups, "system:nodes") {
		return "requester " + csr.Spec.Username + " is not a node"
	}
	block, _ := pem.Decode(csr.Spec.Request)
	if block == nil {
		return "request is not PEM"
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return "request does not parse: " + err.Error()
	}
	if req.Subject.CommonName != csr.Spec.Username || len(req.Subject.Organization) != 1 || req.Subject.Organization[0] != "system:nodes" {
		return "subject is not CN=" + csr.Spec.Username + ", O=system:nodes"
	}
	node, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Sprintf("node %s unknown: %v", nodeName, err)
	}
	allowed := map[string]bool{nodeName: true}
	for _, a := range node.Status.Addresses {
		allowed[a.Address] = true
	}
	for _, d := range req.DNSNames {
		if !allowed[d] {
			return "DNS SAN " + d + " is not one of the node's names"
		}
	}
	for _, ip := range req.IPAddresses {
		if !allowed[ip.String()] && !ip.Equal(net.IPv4(127, 0, 0, 1)) {
			return "IP SAN " + ip.String() + " is not one of the node's addresses"
		}
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
