"""Tests for tokenizer.py: a small hand-made LLaDA-style tokenizer.json, ids worked out by hand."""
import json
import re
import unicodedata

import pytest

from tokenizer import (BOS, EOS, EOT, END_HEADER, MASK, SPECIAL_TOKENS, START_HEADER, TINY_MERGES,
                       TINY_MERGES_FILE, TINY_PATTERN, Tokenizer, bytes_to_unicode, chat_prompt, end_of_turn,
                       read_merges, train_bpe, write_merges)
from model import Config

# LLaDA's pre-tokenizer regex, as in the released LLaDA-8B-Instruct's tokenizer.json (pre_tokenizer).
LLADA_REGEX = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*"
               r"|\s*[\r\n]|\s+(?!\S)|\s+")

# Merges in GPT-2 characters ('Ġ' is a space; 'Ã ©' are the bytes C3 A9 of 'é'; 'Î ©' of 'Ω';
# 'ä ¸ Ń' of '中'). Merge k makes id 256 + k, the way BPE training numbers them.
MERGES = ["c a", "ca f", "Ã ©", "caf Ã©", "h e", "l l", "he ll", "hell o", "Ġ w", "Î ©", "Ġ Î©",
          "ä ¸", "ä¸ Ń", "Ġ x", "Ġ Ġ", "1 2"]
#          256    257     258     259      260    261     262      263      264    265     266
#          267     268     269    270    271
# Added tokens after the 272 base ids, in an order unlike the tiny tokenizer's, plus one added token
# not flagged special and one whose string is not in NFC (it must still match as written).
ADDED = [(BOS, 272), (EOS, 273), ("<|reserved_token_0|>", 274), (MASK, 275), (START_HEADER, 276),
         (END_HEADER, 277), (EOT, 278), ("<|e\u0301|>", 279)]


def byte_id(b: int) -> int:
    """The id of byte b in GPT-2 order, written out range by range: printable bytes first
    ('!'..'~', '¡'..'¬', '®'..'ÿ'), then the other 68 in byte order."""
    if 33 <= b <= 126: return b - 33           # 0..93
    if 161 <= b <= 172: return b - 161 + 94     # 94..105
    if 174 <= b <= 255: return b - 174 + 106    # 106..187
    if b <= 32: return b + 188                  # 188..220 (space = 220, "\n" = 198)
    if 127 <= b <= 160: return b - 127 + 221    # 221..254
    return 255                                  # b == 173, the soft hyphen


def B(s: str) -> list[int]:
    """Byte ids of s when no merge applies."""
    return [byte_id(b) for b in s.encode()]


def llada_like_spec() -> dict:
    byte_pieces = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    merged = {a + b: 256 + k for k, (a, b) in enumerate(m.split(" ") for m in MERGES)}
    return {
        "version": "1.0",
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": not s.startswith("<|reserved")} for s, i in ADDED],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLADA_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {**byte_pieces, **merged}, "merges": list(MERGES)},
    }


def write(tmp_path, spec) -> str:
    path = tmp_path / "tokenizer.json"
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec), encoding="utf-8")
    return path


@pytest.fixture
def tok(tmp_path):
    return Tokenizer.from_pretrained(write(tmp_path, llada_like_spec()))


# -----------------------------------------------------------------------------
# the byte table and the converted tokenizer

def test_byte_table_is_gpt2_order():
    table = bytes_to_unicode()
    assert (table[32], table[10], table[173], table[0xC3]) == ("Ġ", "Ċ", "Ń", "Ã")
    assert [byte_id(b) for b in table] == list(range(256))  # dict order = GPT-2 id order
    assert len(set(table.values())) == 256
    assert (byte_id(ord(" ")), byte_id(ord("\n"))) == (220, 198)  # as in LLaDA


def test_special_ids_come_from_the_file(tok):
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (272, 273, 273, 275)
    assert (tok.start_header_id, tok.end_header_id, tok.eot_id) == (276, 277, 278)
    assert tok.n_vocab == 280


@pytest.mark.parametrize("text, ids", [
    ("hello world", [263, 264, *B("orld")]),
    ("café Ω 中文", [259, 266, 220, 268, *B("文")]),   # 文 has no merges: three byte ids
    ("cafe\u0301 A\u030a", [259, 220, *B("Å")]),      # NFD in, NFC encoded: é merges, Å = C3 85
    (" \t\n\r  x", [220, 197, 198, 201, 220, 269]),   # " \t\n\r" | " " | " x": "ĠĠ" must not form
    ("x   ", [87, 270, 220]),                         # "x" | "   ": the leftmost "Ġ Ġ" merges first
    ("12345", B("12345")),                            # \p{N}: one digit per piece, so "1 2" never merges
    ("x12", [87, *B("12")]),
])
def test_encode_by_hand(tok, text, ids):
    assert tok.encode(text) == ids


def test_special_tokens_inside_text(tok):
    expected = [272, 276, *B("user"), 277, 198, 198, *B("hi"), 278,
                276, *B("assistant"), 277, 198, 198]
    assert tok.encode(chat_prompt("hi")) == expected
    assert tok.chat("hi") == expected
    assert tok.encode("a<|mdm_mask|><|mdm_mask|>b") == [*B("a"), 275, 275, *B("b")]
    assert tok.encode("x<|reserved_token_0|>") == [87, 274]  # added but not flagged special
    # NFC touches only the text between special tokens: the NFD token string still matches.
    assert tok.encode("cafe\u0301<|e\u0301|>") == [259, 279]


@pytest.mark.parametrize("text", ["hello world", "café Ω 中文", "cafe\u0301 A\u030a", " \t\n\r  x",
                                  chat_prompt("2+3=? 🙂")])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)


def test_decode_joins_bytes_before_decoding(tok):
    ids = B("文")                        # one character split over three tokens
    assert tok.decode(ids) == "文"
    assert tok.decode(ids[:1]) == "\ufffd"  # a lone piece of it is not valid UTF-8


def test_path_forms_and_merge_formats(tmp_path):
    spec = llada_like_spec()
    spec["model"]["merges"] = [m.split(" ") for m in MERGES]          # [a, b] pairs instead of "a b"
    spec["model"]["vocab"].update({s: i for s, i in ADDED})           # added tokens also in the vocab
    write(tmp_path, spec)
    for path in (tmp_path, tmp_path / "tokenizer.json"):              # the folder or the file
        assert Tokenizer.from_pretrained(path).encode("café Ω<|eot_id|>") == [259, 266, 278]


# -----------------------------------------------------------------------------
# files that cannot be reproduced exactly are refused, naming the file and the entry

def _swap_merge_ids(s):
    s["model"]["vocab"]["ca"], s["model"]["vocab"]["caf"] = 257, 256


def _drop_added(s, content):
    s["added_tokens"] = [t for t in s["added_tokens"] if t["content"] != content]


@pytest.mark.parametrize("mutate, message", [
    (_swap_merge_ids, r"merges\[1\] = 'ca f'.*not above"),
    (lambda s: s["model"]["vocab"].update({"xyz": 300}), r"'xyz' is the result of no merge"),
    (lambda s: s["model"]["merges"].append("x y"), r"merges\[16\].*'xy' is not in the vocab"),
    (lambda s: s["model"]["vocab"].pop("Ā"), r"lacks single-byte pieces, first byte 0"),
    (lambda s: _drop_added(s, MASK), r"'<\|mdm_mask\|>' is missing"),
    (lambda s: s["model"].update(byte_fallback=True), r"model.byte_fallback"),
    (lambda s: s["model"].update(type="WordPiece"), r"model.type"),
    (lambda s: s.update(normalizer={"type": "NFD"}), r"normalizer .* not supported"),
    (lambda s: s.update(pre_tokenizer={"type": "ByteLevel", "use_regex": True}), r"pre_tokenizer"),
    (lambda s: s["added_tokens"][0].update(lstrip=True), r"lstrip"),
])
def test_malformed_files_are_refused(tmp_path, mutate, message):
    spec = llada_like_spec()
    mutate(spec)
    path = write(tmp_path, spec)
    with pytest.raises(ValueError, match=message) as err:
        Tokenizer.from_pretrained(path)
    assert str(path) in str(err.value)


def test_invalid_json_names_the_file(tmp_path):
    path = write(tmp_path, '{"model": ')
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)


# -----------------------------------------------------------------------------
# save_pretrained: a folder that from_pretrained reads back as the same tokenizer

ROUND_TRIP_TEXTS = [
    "", "hello world", "The answer's 42. They'll've", "0123456789 12+30=42 3.14 -7", "a\nb\r\n\n\n  \t x  ",
    "café Ω 中文 🙂 naïve", "cafe\u0301 A\u030a \u1e9b\u0323",  # NFD in: NFC (or not) must be kept
    "a_b __x <reasoning>\n19+8=27\n</reasoning>\n<answer>\n27\n</answer>\n",
    chat_prompt("What is 2+3?") + "<reasoning>5</reasoning><|eot_id|><|endoftext|><|endoftext|>",
    "x<|mdm_mask|><|mdm_mask|>y<|start_header_id|>", "<|mdm_mask", "\x00\x7f\xad\ufeff",
]


def same_tokenizer(a: Tokenizer, b: Tokenizer):
    for name in ("special_tokens", "normalize", "n_vocab", "pattern", "bos_id", "eos_id", "pad_id", "mask_id",
                 "eot_id", "start_header_id", "end_header_id"):
        assert getattr(a, name) == getattr(b, name), name
    for text in ROUND_TRIP_TEXTS:
        ids = a.encode(text)
        assert b.encode(text) == ids and b.decode(ids) == a.decode(ids), text
    every_id = list(range(a.n_vocab))
    assert [b.decode([i]) for i in every_id] == [a.decode([i]) for i in every_id]


def test_tiny_tokenizer_saved_and_read_back_is_identical(tmp_path):
    tiny = Tokenizer.tiny()
    tiny.save_pretrained(tmp_path / "new" / "folder")  # the folders are created
    assert sorted(p.name for p in (tmp_path / "new" / "folder").iterdir()) == ["tokenizer.json"]  # no .tmp left
    again = Tokenizer.from_pretrained(tmp_path / "new" / "folder")
    same_tokenizer(tiny, again)
    assert again.ranks == tiny.ranks and again.source_file == tmp_path / "new" / "folder" / "tokenizer.json"


def test_generated_file_is_in_llada_format(tmp_path):
    Tokenizer.tiny().save_pretrained(tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec["model"]
    assert model["type"] == "BPE" and not model["byte_fallback"] and spec["normalizer"] == {"type": "NFC"}
    assert [t["content"] for t in spec["added_tokens"]] == list(SPECIAL_TOKENS)
    assert [t["id"] for t in spec["added_tokens"]] == list(range(256, 262))
    assert all(t["special"] for t in spec["added_tokens"])
    split, byte_level = spec["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"]["Regex"] == TINY_PATTERN and split["behavior"] == "Isolated"
    assert byte_level == dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=False)
    assert spec["decoder"]["type"] == "ByteLevel"
    # byte i is id i in the tiny tokenizer, written as its GPT-2 character: space is "Ġ", "\n" is "Ċ"
    assert (model["vocab"]["Ġ"], model["vocab"]["Ċ"], model["vocab"]["a"]) == (32, 10, 97)
    # one merge per merged token, in id order; each joins two pieces with lower ids
    merges = [m.split(" ") for m in model["merges"]]
    assert len(merges) == TINY_MERGES
    assert [model["vocab"][a + b] for a, b in merges] == list(range(262, 437))
    assert all(max(model["vocab"][a], model["vocab"][b]) < model["vocab"][a + b] for a, b in merges)


def merges_of(ranks):
    specials = {s: 400 + i for i, s in enumerate(SPECIAL_TOKENS)}
    tok = Tokenizer({bytes([b]): b for b in range(256)} | ranks, specials, TINY_PATTERN)
    return tok.hf_json()["model"]["merges"]


def test_each_merge_is_the_pair_tiktoken_joins_last():
    # h e l l o -> he l l o -> he ll o -> hell o -> hello ("llo" comes later than "hell")
    assert merges_of({b"he": 256, b"ll": 257, b"hell": 300, b"llo": 303, b"hello": 304})[-1] == "hell o"
    # a b c d -> a b cd -> ab cd -> abcd, although "abc" + "d" has the lower larger id (258 < 259)
    assert merges_of({b"cd": 256, b"bc": 257, b"abc": 258, b"ab": 259, b"abcd": 300})[-1] == "ab cd"
    # tiktoken never builds "abcd" alone (a bc d is stuck): the split whose larger id is smallest
    assert merges_of({b"bc": 256, b"ab": 257, b"cd": 258, b"abcd": 300})[-1] == "ab cd"
    with pytest.raises(ValueError, match="b'xyz' .*cannot be written as a BPE merge"):
        merges_of({b"xyz": 300})


def test_hugging_face_reads_the_generated_file_the_same_way(tmp_path):
    """With Hugging Face's tokenizers installed (it is not a dependency): the same ids as tiktoken's."""
    hf_tokenizers = pytest.importorskip("tokenizers")
    tiny = Tokenizer.tiny()
    tiny.save_pretrained(tmp_path)
    hf = hf_tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    texts = [*ROUND_TRIP_TEXTS, *(tiny.decode([i]) for i in range(256, tiny.n_vocab))]
    assert [hf.encode(t, add_special_tokens=False).ids for t in texts] == [tiny.encode(t) for t in texts]


def test_normalize_flag_survives_the_round_trip(tmp_path):
    tiny = Tokenizer.tiny()
    raw = Tokenizer(tiny.ranks, tiny.special_tokens, tiny.pattern, normalize=False)
    raw.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.normalize is False
    assert json.loads((tmp_path / "tokenizer.json").read_text())["normalizer"] is None
    assert again.encode("cafe\u0301") == raw.encode("cafe\u0301") != tiny.encode("cafe\u0301")
    same_tokenizer(raw, again)


def test_read_tokenizer_is_copied_byte_for_byte_with_its_side_files(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    # indented, keys in the file's own order: a re-serialised file would differ from this one
    write(source, json.dumps(llada_like_spec(), indent=4, ensure_ascii=False))
    side = {"tokenizer_config.json": '{"chat_template": "{{ bos_token }}...", "model_max_length": 4096}\n',
            "special_tokens_map.json": '{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}'}
    for name, text in side.items():
        (source / name).write_text(text)
    (source / "config.json").write_text("{}")  # not a tokenizer file: not copied
    tok = Tokenizer.from_pretrained(source)
    assert tok.source_file == source / "tokenizer.json"

    tok.save_pretrained(tmp_path / "copy")
    copied = sorted(p.name for p in (tmp_path / "copy").iterdir())
    assert copied == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    for name in copied:
        assert (tmp_path / "copy" / name).read_bytes() == (source / name).read_bytes()
    same_tokenizer(tok, Tokenizer.from_pretrained(tmp_path / "copy"))

    # the file path form, without side files: only tokenizer.json; saving over the source changes nothing
    (source / "tokenizer_config.json").unlink()
    (source / "special_tokens_map.json").unlink()
    Tokenizer.from_pretrained(source / "tokenizer.json").save_pretrained(tmp_path / "bare")
    assert [p.name for p in (tmp_path / "bare").iterdir()] == ["tokenizer.json"]
    before = (source / "tokenizer.json").read_bytes()
    tok.save_pretrained(source)
    assert (source / "tokenizer.json").read_bytes() == before


def test_saving_after_the_source_file_is_gone_names_it(tmp_path):
    tok = Tokenizer.from_pretrained(write(tmp_path, llada_like_spec()))
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json: cannot copy the tokenizer.json"):
        tok.save_pretrained(tmp_path / "out")


# -----------------------------------------------------------------------------
# the tiny tokenizer: bytes, LLaDA's special tokens, and a small BPE trained by the project

def test_tiny_ids():
    tok = Tokenizer.tiny()
    assert tok is Tokenizer.tiny()  # cached
    assert [tok.bos_id, tok.eos_id, tok.mask_id, tok.start_header_id, tok.end_header_id,
            tok.eot_id] == list(range(256, 262))
    # 256 bytes + 6 special tokens + the shipped merges, padded to the tiny model's 448 embedding rows
    assert len(read_merges(TINY_MERGES_FILE)) == TINY_MERGES == 175
    assert tok.pad_id == tok.eos_id and tok.n_vocab == 256 + len(SPECIAL_TOKENS) + TINY_MERGES == 437
    assert Config.preset("tiny").vocab_size == Config.preset("tiny").embedding_size == 448


@pytest.mark.parametrize("text", ["hello world", "café Ω 中文 🙂", "  \t\n x", "a_b __x", "<reasoning>19+8=27"])
def test_tiny_round_trip(text):
    tok = Tokenizer.tiny()
    assert tok.decode(tok.encode(text)) == text


def test_tiny_merges_shorten_the_tags_but_keep_digits_single():
    tok = Tokenizer.tiny()
    pieces = [tok.decode([i]) for i in tok.encode("<reasoning>12+30=42</reasoning>\n<answer>42</answer>")]
    assert pieces[:2] == ["<reasoning", ">"]
    assert [p for p in pieces if p.isdigit()] == list("1230424" + "2")  # every digit its own token
    assert len(pieces) < 30  # 52 bytes


def test_train_bpe_merges_the_most_frequent_pair_first():
    # pieces: "aaab" once, "ab" three times -> pairs (a,b) x4, (a,a) x2: "ab" first. Then "aaab" is
    # (a, a, ab): (a, a) and (a, ab) once each, a tie broken by the bytes: b"ab" > b"a", so "aab".
    assert train_bpe(["aaab", "ab ab ab"], 2, pattern=r"\w+|\s+") == [b"ab", b"aab"]
    # ties are broken by the bytes (deterministic), and training stops when nothing is left to merge
    assert train_bpe(["xy"], 5, pattern=r"\w+") == [b"xy"]


def test_merges_file_round_trip(tmp_path):
    merges = [b"ab", b" x\n", bytes([255, 0])]
    write_merges(merges, tmp_path / "m.bpe")
    assert read_merges(tmp_path / "m.bpe") == merges
    (tmp_path / "bad.bpe").write_text("not base64 !!\n")
    with pytest.raises(ValueError, match="bad.bpe: cannot read the tiny tokenizer's merges"):
        read_merges(tmp_path / "bad.bpe")


def test_end_of_turn():
    assert end_of_turn("<answer>5</answer>" + EOT + EOS + EOS) == "<answer>5</answer>"
    assert end_of_turn("a" + EOS + "b" + EOT) == "a"  # whichever comes first
    assert end_of_turn("no end") == "no end" and end_of_turn(EOT) == ""
    assert chat_prompt("hi").endswith("\n\n") and end_of_turn(chat_prompt("hi")).endswith("hi")


def test_ids_past_the_vocabulary_decode_to_a_replacement_character():
    tok = Tokenizer.tiny()
    assert tok.decode([104, tok.n_vocab + 3, 105]) == "h\ufffdi"


def test_tiny_specials_and_chat():
    tok = Tokenizer.tiny()
    assert tok.encode("a<|mdm_mask|>b") == [97, 258, 98]
    assert tok.encode("cafe\u0301") == tok.encode("café")  # NFC
    ids = tok.chat("What is 2+3?")
    assert ids == tok.encode(chat_prompt("What is 2+3?"))
    assert ids[:2] == [tok.bos_id, tok.start_header_id]
    assert ids[-1 - len(tok.encode("\n\n")):] == [tok.end_header_id] + tok.encode("\n\n")
    assert tok.decode(ids) == chat_prompt("What is 2+3?")
