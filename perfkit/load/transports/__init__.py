"""The load generator's transports, behind one seam (`base`): each sends pre-encoded requests and
records their timings through the one completion path.

- `base`: `Pool` / `Slot` protocols, `Timings` (append-only record), `LoopState`, `complete`, `Clock`.
- `http1`: HTTP/1.1 keep-alive connections (the HTTP hot path).
- `h2`: lean gRPC over HTTP/2 (the gRPC hot path).
- `h2stream`: --streaming, gRPC's ModelStreamInfer on the same lean HTTP/2 framing.
- `grpcio`: the grpcio fallback (`--grpc-client grpcio`).
- `fake`: a fake pool on a virtual clock, for the driver's unit tests.
"""
