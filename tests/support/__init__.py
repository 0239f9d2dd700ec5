"""Test-only helpers: the loopback Kubernetes API, KubeRay schema checks, manifest checks.

They live with the tests, not in the package: they need the test extras (jsonschema,
kubernetes-validate) and read the KubeRay CRDs outside the repository. Tests import them as
`support.<module>`: tests/conftest.py puts tests/ on sys.path (pytest's rootdir conftest,
default import mode). The loopback LLM server stays in kdist/testing/ (benchmarks use it).
"""
