"""Triton's python backend: a `model.py` defining TritonPythonModel, one stub process per instance.

backend.py is the server side (PythonBackend), bls.py runs a model's BLS requests, stub.py is the
child process, ipc.py the framed protocol between them; the API models import is
server/triton_python_backend_utils.py (next to the perfkit_server package).
"""
