"""The zoo's pipeline and stateful models, written as a Triton user would: Python pre-processing ->
an ONNX classifier -> Python post-processing, served as an ensemble and as a BLS model, and a
sequence-batched accumulator. Pure: model.py sources, config.pbtxt texts and one ONNX graph.

The model.py files use only Triton's python backend API (triton_python_backend_utils), so the same
file runs on a real tritonserver and on perfkit_server's python backend.

    pipeline_pre         IMAGE UINT8 [4,4,3] (HWC) -> PIXELS FP32 [3,4,4] (CHW, ImageNet-normalized)
    pipeline_classifier  INPUT0 FP32 [3,4,4] -> OUTPUT0 FP32 [10] logits (Flatten + Gemm, seeded)
    pipeline_post        LOGITS FP32 [10] -> SCORES FP32 [3], CLASSES INT32 [3] (softmax, top 3)
    pipeline_ensemble    IMAGE -> SCORES, CLASSES through the three (ensemble_scheduling)
    pipeline_bls         the same, a python model calling the three (InferenceRequest.exec)
    accumulator          INPUT0 INT32 [1] -> OUTPUT0 INT32 [1], the running sum of its sequence
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from perfkit.zoo import _graphs

IMAGE_HWC = (4, 4, 3)
PIXELS_CHW = (3, 4, 4)
CLASSES = 10
TOP_K = 3
MAX_BATCH_SIZE = 8
STEPS = ("pipeline_pre", "pipeline_classifier", "pipeline_post")
# ImageNet's channel statistics, as torchvision's transforms.Normalize uses them.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def classifier(seed: int = 13) -> onnx.ModelProto:
    """OUTPUT0 = Flatten(INPUT0) @ W + b: FP32 [batch, 3, 4, 4] -> [batch, 10], seeded weights."""
    rng = np.random.default_rng(seed)
    fan_in = int(np.prod(PIXELS_CHW))
    weight, bias = _graphs._linear_init(rng, fan_in, CLASSES)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["INPUT0"], ["flat"], axis=1, name="flatten"),
            helper.make_node("Gemm", ["flat", "weight", "bias"], ["OUTPUT0"], name="fc"),
        ],
        "pipeline_classifier",
        [_graphs._value_info("INPUT0", PIXELS_CHW)],
        [_graphs._value_info("OUTPUT0", (CLASSES,))],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    return _graphs._model(graph, f"perfkit zoo pipeline classifier 48 -> 10, seed {seed}")


def _config(body: str, name: str, backend: str) -> str:
    return f'name: "{name}"\n{backend}\nmax_batch_size: {MAX_BATCH_SIZE}\n{body.strip()}\n'


# A composing model batches what the pipeline sends it: the ensemble and the BLS model hand each
# step one request per client request, so dynamic batching is where batches form.
_BATCHING = "dynamic_batching { max_queue_delay_microseconds: 100 }"
_ONE_CPU = "instance_group [ { count: 1 kind: KIND_CPU } ]"

PRE_CONFIG = _config(
    f"""
input [ {{ name: "IMAGE" data_type: TYPE_UINT8 dims: [ 4, 4, 3 ] }} ]
output [ {{ name: "PIXELS" data_type: TYPE_FP32 dims: [ 3, 4, 4 ] }} ]
{_ONE_CPU}
{_BATCHING}
""",
    "pipeline_pre",
    'backend: "python"',
)

CLASSIFIER_CONFIG = _config(
    f"""
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 3, 4, 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 10 ] }} ]
{_ONE_CPU}
{_BATCHING}
""",
    "pipeline_classifier",
    'platform: "onnxruntime_onnx"',
)

POST_CONFIG = _config(
    f"""
input [ {{ name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ] }} ]
output [
  {{ name: "SCORES" data_type: TYPE_FP32 dims: [ 3 ] }},
  {{ name: "CLASSES" data_type: TYPE_INT32 dims: [ 3 ] }}
]
{_ONE_CPU}
{_BATCHING}
""",
    "pipeline_post",
    'backend: "python"',
)

_PIPELINE_IO = """
input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ 4, 4, 3 ] } ]
output [
  { name: "SCORES" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "CLASSES" data_type: TYPE_INT32 dims: [ 3 ] }
]
"""

ENSEMBLE_CONFIG = _config(
    _PIPELINE_IO
    + """
ensemble_scheduling {
  step [
    {
      model_name: "pipeline_pre"
      model_version: -1
      input_map { key: "IMAGE" value: "IMAGE" }
      output_map { key: "PIXELS" value: "pixels" }
    },
    {
      model_name: "pipeline_classifier"
      model_version: -1
      input_map { key: "INPUT0" value: "pixels" }
      output_map { key: "OUTPUT0" value: "logits" }
    },
    {
      model_name: "pipeline_post"
      model_version: -1
      input_map { key: "LOGITS" value: "logits" }
      output_map [ { key: "SCORES" value: "SCORES" }, { key: "CLASSES" value: "CLASSES" } ]
    }
  ]
}
""",
    "pipeline_ensemble",
    'platform: "ensemble"',
)

BLS_CONFIG = _config(
    _PIPELINE_IO
    + """
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { }
""",
    "pipeline_bls",
    'backend: "python"',
)

ACCUMULATOR_CONFIG = _config(
    """
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  direct { }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
}
instance_group [ { count: 2 kind: KIND_CPU } ]
""",
    "accumulator",
    'backend: "python"',
)

PRE_MODEL_PY = f'''"""perfkit zoo pipeline_pre: UINT8 HWC image -> FP32 CHW, scaled to [0, 1] and normalized."""
import numpy as np
import triton_python_backend_utils as pb_utils

MEAN = np.array({list(MEAN)}, dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array({list(STD)}, dtype=np.float32).reshape(1, 3, 1, 1)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            pixels = image.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
            pixels = np.ascontiguousarray((pixels - MEAN) / STD, dtype=np.float32)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PIXELS", pixels)])
            )
        return responses
'''

POST_MODEL_PY = f'''"""perfkit zoo pipeline_post: logits -> the top {TOP_K} softmax scores and their classes."""
import numpy as np
import triton_python_backend_utils as pb_utils

TOP_K = {TOP_K}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy()
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
            classes = np.argsort(-probs, axis=1, kind="stable")[:, :TOP_K]
            scores = np.take_along_axis(probs, classes, axis=1)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("SCORES", scores.astype(np.float32)),
                        pb_utils.Tensor("CLASSES", classes.astype(np.int32)),
                    ]
                )
            )
        return responses
'''

BLS_MODEL_PY = f'''"""perfkit zoo pipeline_bls: the pipeline as Business Logic Scripting, one request per step."""
import triton_python_backend_utils as pb_utils

STEPS = {list(STEPS)}


class StepFailed(Exception):
    pass


def _call(model_name, inputs, outputs):
    request = pb_utils.InferenceRequest(
        model_name=model_name, inputs=inputs, requested_output_names=outputs
    )
    response = request.exec()
    if response.has_error():
        raise StepFailed(f"{{model_name}}: {{response.error().message()}}")
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]


class TritonPythonModel:
    def initialize(self, args):
        self.steps_loaded = False

    def _load_steps(self):
        # A BLS model declares no dependencies, so loaded alone (explicit model control, as
        # `perfkit run -m pipeline_bls` loads it) it loads its steps itself, through Triton's model
        # loading API, on first use: during the server's startup that API is refused.
        for name in STEPS:
            if not pb_utils.is_model_ready(model_name=name):
                pb_utils.load_model(model_name=name)
        self.steps_loaded = True

    def execute(self, requests):
        if not self.steps_loaded:
            try:
                self._load_steps()
            except pb_utils.TritonModelException as exc:
                error = pb_utils.TritonError(f"loading the pipeline steps: {{exc}}")
                return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                (pixels,) = _call("pipeline_pre", [pb_utils.Tensor("IMAGE", image)], ["PIXELS"])
                (logits,) = _call(
                    "pipeline_classifier", [pb_utils.Tensor("INPUT0", pixels)], ["OUTPUT0"]
                )
                scores, classes = _call(
                    "pipeline_post", [pb_utils.Tensor("LOGITS", logits)], ["SCORES", "CLASSES"]
                )
            except StepFailed as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("SCORES", scores),
                        pb_utils.Tensor("CLASSES", classes),
                    ]
                )
            )
        return responses
'''

ACCUMULATOR_MODEL_PY = '''"""perfkit zoo accumulator: OUTPUT0 is the running sum of INPUT0 over the request's sequence.

The sequence batcher's control inputs say which sequence a batch slot holds (CORRID), whether it
starts or ends there (START, END) and whether the slot holds a request at all (READY). The Direct
strategy keeps a sequence on one instance, so each instance keeps the sums of its own sequences.
"""
import numpy as np
import triton_python_backend_utils as pb_utils

# Sequences a client abandons (no END) are dropped oldest-first beyond this many per instance.
MAX_SEQUENCES = 4096


def _scalar(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if not _scalar(request, "READY"):
                # An empty slot of the batch: no sequence, no state touched.
                total = np.zeros_like(value)
            else:
                sequence = int(_scalar(request, "CORRID"))
                start = 0 if _scalar(request, "START") else self.sums.pop(sequence, 0)
                total = np.asarray(value, dtype=np.int32) + np.int32(start)
                if not _scalar(request, "END"):
                    self.sums[sequence] = int(total.reshape(-1)[0])
                    while len(self.sums) > MAX_SEQUENCES:
                        self.sums.pop(next(iter(self.sums)))
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT0", total.astype(np.int32))]
                )
            )
        return responses
'''


def preprocess(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """pipeline_pre's PIXELS for a UINT8 [batch, 4, 4, 3] image batch, computed here."""
    mean = np.array(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    pixels = image.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)


def logits(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """pipeline_classifier's OUTPUT0 for a PIXELS batch, from the graph's weights."""
    weights = {t.name: numpy_helper.to_array(t) for t in classifier().graph.initializer}
    out = pixels.reshape(len(pixels), -1) @ weights["weight"] + weights["bias"]
    return np.asarray(out, dtype=np.float32)


def reference(
    image: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """The pipeline's outputs computed here (numpy + the ONNX graph's weights): (SCORES, CLASSES)
    for a UINT8 [batch, 4, 4, 3] image batch. Tests compare served outputs with it."""
    scores = logits(preprocess(image))
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    classes = np.argsort(-probs, axis=1, kind="stable")[:, :TOP_K]
    top = np.take_along_axis(probs, classes, axis=1)
    return top.astype(np.float32), classes.astype(np.int32)
