"""AutoRound (auto-round 0.16.1): SignRound tuning of the Qwen3-VL decoder blocks, exported by auto-round itself."""
