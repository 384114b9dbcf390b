// Command health-eval computes Argo CD resource health with Argo CD's own code.
//
// Standard input is one JSON document: {"argocdCM": {key: value}, "objects": [object, ...]}, where
// argocdCM holds argocd-cm data keys (resource.customizations.health.<group>_<kind> and the like) and
// each object is a Kubernetes object as the API server returns it. Standard output is a JSON array
// with one {"status", "message", "error"} per object: the health the application controller records
// for it. An empty status means Argo CD assesses no health for that object.
//
// The argocd-cm data reaches util/lua through argo-cd's own settings parsing and the health through
// gitops-engine's GetResourceHealth, the same calls the controller makes in controller/health.go, so
// what this prints is what Argo CD shows, deletion handling included.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/argoproj/argo-cd/v3/pkg/apis/application/v1alpha1"
	"github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/argo-cd/v3/util/settings"
)

const namespace = "argocd"

type request struct {
	ArgoCDCM map[string]string `json:"argocdCM"`
	Objects  []map[string]any  `json:"objects"`
}

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "health-eval:", err)
		os.Exit(1)
	}
}

func run() error {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	overrides, err := resourceOverrides(req.ArgoCDCM)
	if err != nil {
		return err
	}
	results := make([]result, 0, len(req.Objects))
	for _, object := range req.Objects {
		status, message, err := resourceHealth(&unstructured.Unstructured{Object: object}, lua.ResourceHealthOverrides(overrides))
		r := result{Status: status, Message: message}
		if err != nil {
			r.Error = err.Error()
		}
		results = append(results, r)
	}
	return json.NewEncoder(os.Stdout).Encode(results)
}

// resourceOverrides reads argocd-cm the way the application controller does: through a
// SettingsManager, here over a fake clientset that holds only that ConfigMap.
func resourceOverrides(data map[string]string) (map[string]v1alpha1.ResourceOverride, error) {
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:      "argocd-cm",
			Namespace: namespace,
			Labels:    map[string]string{"app.kubernetes.io/part-of": "argocd"},
		},
		Data: data,
	}
	manager := settings.NewSettingsManager(context.Background(), fake.NewClientset(cm), namespace)
	overrides, err := manager.GetResourceOverrides()
	if err != nil {
		return nil, fmt.Errorf("reading argocd-cm: %w", err)
	}
	return overrides, nil
}
