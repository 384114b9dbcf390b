//go:build !gitops_engine_v0

// Argo CD 3.6 and later import gitops-engine as github.com/argoproj/argo-cd/gitops-engine/v3, a
// module tagged in the argo-cd repository alongside each release.
package main

import (
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/argoproj/argo-cd/gitops-engine/v3/pkg/health"
)

// resourceHealth is what controller/health.go records for a live object.
func resourceHealth(obj *unstructured.Unstructured, override health.HealthOverride) (string, string, error) {
	status, err := health.GetResourceHealth(obj, override)
	if status == nil {
		return "", "", err
	}
	return string(status.Status), status.Message, err
}
