//go:build gitops_engine_v0

// Argo CD 3.2 and earlier import gitops-engine as github.com/argoproj/gitops-engine, a module of
// its own repository (3.3 to 3.5 build it from a directory of argo-cd that no module serves).
package main

import (
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/argoproj/gitops-engine/pkg/health"
)

// resourceHealth is what controller/health.go records for a live object.
func resourceHealth(obj *unstructured.Unstructured, override health.HealthOverride) (string, string, error) {
	status, err := health.GetResourceHealth(obj, override)
	if status == nil {
		return "", "", err
	}
	return string(status.Status), status.Message, err
}
