"""GLoRIA from pre-trained parts: a timm image backbone file and a local Hugging Face BERT
folder (save_pretrained layout), as the original GLoRIA starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch

from ecamp.cli import main
from ecamp.errors import UserError
from ecamp.models.gloria import GLoRIA, gloria_config
from ecamp.models.gloria_init import load_pretrained_parts, resolve_text_init
from ecamp.train.attention import AttentionDataConfig, load_attention_config


def bert_folder(root: Path, tokenizer_json: bool = True, seed: int = 0) -> Path:
    """A tiny BERT written by save_pretrained, on the phantom world's word pieces."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from ecamp.text.tokenizer import load_tokenizer

    folder = root / ("bert" if tokenizer_json else "bert_vocab_only")
    vocab = load_tokenizer("phantom").get_vocab()
    folder.mkdir(parents=True)
    vocab_txt = folder / "vocab.txt"
    vocab_txt.write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,  # longer than GLoRIA's tiny max_text_len (64)
        pad_token_id=vocab["[PAD]"],
    )
    BertModel(cfg).save_pretrained(folder)  # BertModel of a BertForMaskedLM-like layout
    tok = BertTokenizerFast(vocab=dict(vocab), do_lower_case=True)
    tok.save_pretrained(folder)
    if not tokenizer_json:
        (folder / "tokenizer.json").unlink()
    return folder


def timm_vit_file(root: Path, gcfg) -> Path:
    torch.manual_seed(1)
    vit = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=5,
        img_size=gcfg.img_size,
        patch_size=gcfg.patch_size,
        embed_dim=gcfg.embed_dim,
        depth=gcfg.depth,
        num_heads=gcfg.num_heads,
    )
    from safetensors.torch import save_file

    path = root / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("tokenizer_json", [True, False])
def test_text_encoder_and_tokenizer_come_from_the_folder(
    tmp_path: Path, tokenizer_json: bool
) -> None:
    from transformers import BertModel

    from ecamp.text.tokenizer import load_tokenizer

    folder = bert_folder(tmp_path, tokenizer_json)
    cfg = gloria_config("tiny")
    cfg.text_init = str(folder)
    data = AttentionDataConfig()
    resolve_text_init(cfg, data)
    assert (cfg.text_width, cfg.text_depth, cfg.text_heads, cfg.text_ffn) == (32, 2, 2, 48)
    assert cfg.max_text_len == 64 and data.tokenizer == str(folder)
    tok = load_tokenizer(data.tokenizer)
    assert tok.get_vocab() == load_tokenizer("phantom").get_vocab()
    assert tok.encode("There is a nodule.", add_special_tokens=False).tokens[:3] == [
        "there",
        "is",
        "a",
    ]
    model = GLoRIA(cfg)
    done = load_pretrained_parts(model, cfg)
    src = BertModel.from_pretrained(str(folder), local_files_only=True).state_dict()
    own = model.text_encoder.bert.state_dict()
    assert torch.equal(
        own["encoder.layer.1.output.dense.weight"], src["encoder.layer.1.output.dense.weight"]
    )
    assert torch.equal(
        own["embeddings.position_embeddings.weight"],
        src["embeddings.position_embeddings.weight"][:64],
    )
    assert "embeddings.position_embeddings.weight" in done["text"]["resized"]
    assert all(k.startswith("pooler.") for k in done["text"]["ignored"])


def test_image_backbone_from_a_timm_file(tmp_path: Path) -> None:
    cfg = gloria_config("tiny")
    path = timm_vit_file(tmp_path, cfg)
    cfg.image_init = str(path)
    model = GLoRIA(cfg)
    done = load_pretrained_parts(model, cfg)
    from safetensors.torch import load_file

    sd = load_file(str(path))
    bb = model.image_encoder.backbone.state_dict()
    assert torch.equal(bb["blocks.1.attn.qkv.weight"], sd["blocks.1.attn.qkv.weight"])
    assert torch.equal(bb["pos_embed"], sd["pos_embed"])  # timm's learned table, not sin-cos
    assert set(done["image"]["ignored"]) == {"head.weight", "head.bias"}
    # a timm CNN (the tiny_cnn preset's mobilenet) loads into the features-only backbone
    cnn_cfg = gloria_config("tiny_cnn")
    torch.manual_seed(2)
    cnn = timm.create_model(cnn_cfg.backbone, pretrained=False)
    torch.save(cnn.state_dict(), tmp_path / "cnn.pth")
    cnn_cfg.image_init = str(tmp_path / "cnn.pth")
    m2 = GLoRIA(cnn_cfg)
    load_pretrained_parts(m2, cnn_cfg)
    assert torch.equal(
        m2.image_encoder.backbone.state_dict()["conv_stem.weight"],
        cnn.state_dict()["conv_stem.weight"],
    )
    # the wrong size is refused
    big = dataclasses.replace(cfg, embed_dim=96)
    with pytest.raises(UserError, match="shape"):
        load_pretrained_parts(GLoRIA(big), big)


def test_missing_files_say_what_to_give(tmp_path: Path) -> None:
    cfg = gloria_config("tiny")
    cfg.text_init = str(tmp_path / "Bio_ClinicalBERT")
    with pytest.raises(UserError, match="save_pretrained.*Bio_ClinicalBERT"):
        resolve_text_init(cfg, AttentionDataConfig())
    (tmp_path / "Bio_ClinicalBERT").mkdir()
    with pytest.raises(UserError, match="config.json"):
        resolve_text_init(cfg, AttentionDataConfig())
    cfg = gloria_config("tiny")
    cfg.image_init = str(tmp_path / "vit.safetensors")
    with pytest.raises(UserError, match="timm checkpoint"):
        resolve_text_init(cfg, AttentionDataConfig())
    cfg = gloria_config("tiny")
    cfg.text_init = str(bert_folder(tmp_path))
    with pytest.raises(UserError, match="its own tokenizer"):
        resolve_text_init(cfg, AttentionDataConfig(tokenizer="phantom"))


def test_attention_train_from_both_parts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecamp.data.synthetic import make_phantom_world
    from ecamp.train.attention import load_trained

    manifest = make_phantom_world(tmp_path / "world", n=12, size=96, seed=3)
    folder = bert_folder(tmp_path)
    vit = timm_vit_file(tmp_path, gloria_config("tiny"))
    out = tmp_path / "model"
    args = [
        "attention", "train", "-o", str(out), "model.preset=tiny",
        f"model.text_init={folder}", f"model.image_init={vit}", f"data.manifest={manifest}",
        "train.max_steps=1", "train.batch_size=4", "train.device=cpu",
        "train.progress=false", "train.tensorboard=false",
    ]  # fmt: skip
    assert main(args) == 0
    cfg = load_attention_config(out / "config.yaml")
    assert cfg.data.tokenizer == str(folder) and cfg.model.text_width == 32
    model, _ = load_trained(out)  # rebuilt from the saved sizes
    assert model.text_encoder.bert.config.hidden_size == 32
    # a missing folder stops before any work, in one line
    bad = [
        a if not a.startswith("model.text_init") else "model.text_init=/nope/Bio_ClinicalBERT"
        for a in args
    ]
    assert main([*bad[:3], str(tmp_path / "m2"), *bad[4:]]) == 2
    assert "Bio_ClinicalBERT" in capsys.readouterr().err
    assert not (tmp_path / "m2" / "phantom").exists()
