import torch

from reasondistill.models import init_model, load_model, load_tokenizer, n_params
from reasondistill.thinking import format_target, split_thinking

from conftest import TINY


def test_char_tokenizer_round_trips_through_autotokenizer(tiny_model_dir, char_tokenizer):
    tok = load_tokenizer(str(tiny_model_dir))
    text = "<|user|>47+5*3 a B?\n<think>52\n</think>\n\n48<|end|>"
    assert tok(text, add_special_tokens=False)["input_ids"] == char_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.convert_ids_to_tokens(tok("<think>x</think>", add_special_tokens=False)["input_ids"]) == ["<think>", "x", "</think>"]
    rendered = tok.apply_chat_template([{"role": "user", "content": "12+3"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|user|>12+3<|end|><|assistant|>"


def test_init_is_seeded_and_leaves_global_rng_alone(char_tokenizer):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = init_model(TINY, char_tokenizer, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = init_model(TINY, char_tokenizer, seed=7)
    c = init_model(TINY, char_tokenizer, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert n_params(a) < 20_000


def test_load_model_reads_safetensors(tiny_model_dir):
    assert (tiny_model_dir / "model.safetensors").exists()
    assert n_params(load_model(str(tiny_model_dir))) > 0


def test_attn_implementation_is_passed_through(tiny_model_dir):
    assert load_model(str(tiny_model_dir)).config._attn_implementation == "sdpa"  # transformers' default
    assert load_model(str(tiny_model_dir), attn_implementation="eager").config._attn_implementation == "eager"


def test_thinking_format_round_trip():
    assert split_thinking(format_target("a\nb", "7")) == ("a\nb", "7", True)
    assert split_thinking("7") == ("", "7", True)
    assert split_thinking("<think>never closed") == ("never closed", "", False)
    assert split_thinking("<think>a</think>1</think>")[2] is False


def test_dtype_auto_is_bf16_where_native(tiny_model_dir):
    import torch

    from reasondistill.models import bf16_is_native, resolve_dtype

    assert resolve_dtype("float32") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert not torch.cuda.is_available() and bf16_is_native() == native  # this suite runs on CPU
    expected = torch.bfloat16 if native else torch.float32
    assert resolve_dtype("auto") == str(expected).removeprefix("torch.")
    assert next(load_model(str(tiny_model_dir), "auto").parameters()).dtype == expected
