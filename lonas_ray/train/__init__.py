"""Super-adapter training on Ray Train + DeepSpeed: config, sampling schedule, worker loop, driver."""
