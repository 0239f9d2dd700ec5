"""kdist on Kubernetes: the KubeRay RayJob built from a run config, and submit/status/cancel."""
