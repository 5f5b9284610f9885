"""Names the dead-code scan reports that are used where vulture cannot see (`make lint` runs
vulture over perfkit and perfkit_server at 60 % confidence, its lowest useful level, with this
file). Every entry says who uses it; anything else vulture reports is dead and goes."""

# ruff: noqa
# fmt: off
from vulture.whitelist_utils import Whitelist

_ = Whitelist()

# Called by name by asyncio (Protocol), httptools (parser callbacks) and prometheus_client
# (Collector.collect).
_.data_received
_.pause_writing  # asyncio.Protocol flow control (write back-pressure)
_.resume_writing
_.on_url
_.on_header
_.on_body
_.on_chunk_header
_.on_message_complete
_.collect

# Registered by decorators vulture does not follow: click commands, atexit.
_.list_models  # perfkit.cli.models: `perfkit models list`
_.build_models  # perfkit.cli.models: `perfkit models build`
_._stop_all  # perfkit.launch._base: atexit.register

# PEP 562 module __getattr__ (perfkit.load imports its engine on first use).
_.__getattr__

# Fields set on objects of other libraries (protobuf messages, ONNX models, ORT session options):
# the library reads them.
_.int64_param
_.bool_param
_.ir_version
_.intra_op_num_threads
_.inter_op_num_threads
_.execution_mode
_.log_severity_level
_.graph_optimization_level
_.enable
_.enable_cpu_mem_arena  # ORT SessionOptions (backends/onnxruntime.py)
_.enable_mem_pattern

# Result fields written to results.json and documented in docs/results-schema.md.
_.min_us
_.batch_executions
_.extensions

# Protocol method parameters (perfkit.tune.space.Suggester mirrors optuna.Trial.suggest_int).
_.low
_.high

# Complete tables of protocol constants: the exit codes, gRPC status codes and HTTP/2 frame types
# and settings are named whole so a reader can check them against their specifications.
_.EXIT_OK
_.OK
_.UNKNOWN
_.PRIORITY_FRAME
_.PUSH_PROMISE
_.SETTINGS_MAX_CONCURRENT_STREAMS

# The library API for users of the results in Python (issue 15); the CLI writes CSVs instead.
_.to_pandas

# The python backend (issue 13): the scheduler calls execute_decoupled for a decoupled model; the
# stub is triton_python_backend_utils' `_runtime` (exec_request) and sets each request's sender.
_.execute_decoupled
_.exec_request
_._sender
# What a decoupled request holds for its consumer: the bound the tests check (tests/server/test_decoupled.py).
_.undelivered

# The zero-config tune's knobs (issue 14): perfkit.tune.auto calls it (built in parallel).
