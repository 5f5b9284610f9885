"""Reports: perf_analyzer / Model Analyzer compatible files, the versioned results schema, HTML, compare gates."""
