"""The example accelerate configs in configs/accelerate/ load with accelerate's own config loader and
use only options `accelerate launch` knows (a typo there is otherwise ignored silently). They need
GPUs (and DeepSpeed) to launch, which the test machine does not have.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/train/test_accelerate_configs.py -q
"""

from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "accelerate").glob("*.yaml"))


def test_the_documented_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"ddp", "fsdp", "zero2", "zero3"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_with_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    cfg = ClusterConfig.from_yaml_file(str(path))  # unknown top-level keys or enum values raise
    known = {a.dest for a in launch_command_parser()._actions}
    nested = {**(cfg.fsdp_config or {}), **(cfg.deepspeed_config or {})}
    assert not set(nested) - known, f"{path.name}: unknown options {sorted(set(nested) - known)}"
    assert cfg.num_processes > 1 and not cfg.use_cpu
    if cfg.deepspeed_config:
        assert cfg.deepspeed_config["zero_stage"] in (2, 3)
        assert cfg.deepspeed_config["zero_stage"] == 2 or cfg.deepspeed_config["zero3_save_16bit_model"]
    if cfg.fsdp_config:
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # final/ as an ordinary HF model
