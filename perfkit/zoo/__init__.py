"""The model zoo: ONNX graphs built with onnx.helper and seeded weights, written as Triton model repositories."""
