"""config.pbtxt and model repositories, read and written with tritonclient model_config_pb2. Pure: no server imports."""
