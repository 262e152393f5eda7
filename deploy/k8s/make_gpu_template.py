"""Derive the GPU Kubernetes base job template from Prefect's default one (run offline, output committed).

    prefect work-pool get-default-base-job-template --type kubernetes > /tmp/default.json
    python deploy/k8s/make_gpu_template.py /tmp/default.json > deploy/k8s/gpu-job-template.json

Adds: `gpu_count` (nvidia.com/gpu in limits, where Kubernetes takes GPUs), a node selector and tolerations for GPU
nodes, and a memory-backed /dev/shm (DataLoader workers exchange batches through shared memory; 64 MiB default).
"""

import json
import sys

template = json.load(open(sys.argv[1]))
props = template["variables"]["properties"]
props["gpu_count"] = {"title": "GPUs", "type": "integer", "default": 1, "description": "nvidia.com/gpu limit"}
props["gpu_node_selector"] = {"title": "GPU node selector", "type": "object", "default": {},
                              "description": "e.g. {cloud.google.com/gke-accelerator: nvidia-l4}"}
props["tolerations"] = {"title": "Tolerations", "type": "array",
                        "default": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
props["shm_size"] = {"title": "/dev/shm size", "type": "string", "default": "16Gi"}
pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
container = pod["containers"][0]
container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_count }}"
container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
pod["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "{{ shm_size }}"}}]
pod["nodeSelector"] = "{{ gpu_node_selector }}"
pod["tolerations"] = "{{ tolerations }}"
json.dump(template, sys.stdout, indent=2)
print()
