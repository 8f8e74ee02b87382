"""
The tokenizer: LLaDA's byte-level BPE run by tiktoken, its special tokens, and its chat template.

    from tokenizer import Tokenizer, chat_prompt, end_of_turn
    tok = Tokenizer.tiny()                          # the tiny model's: bytes, specials, 175 BPE merges
    tok = Tokenizer.from_pretrained("LLaDA-8B-Instruct")  # a folder holding the released tokenizer.json
    ids = tok.chat("What is 2+3?")                  # == tok.encode(chat_prompt("What is 2+3?"))
    print(tok.decode(ids), tok.mask_id, tok.n_vocab)
    tok.save_pretrained("out/tiny-hf")              # writes out/tiny-hf/tokenizer.json (see below)
    end_of_turn("5</answer><|eot_id|><|endoftext|>")  # '5</answer>': the answer, cut at the turn's end

One class, two sources of ranks:
1. Tokenizer.tiny(): the 256 bytes (id i = byte i), LLaDA's 6 special tokens at 256..261, then the
   merges of a small byte-level BPE the project trained on the tiny tasks' text (tokenizer_tiny.bpe;
   `python tasks_tiny.py --train-tokenizer` trains a new one): 256 + 6 + 175 = 437 ids.
2. Tokenizer.from_pretrained(path): converts Hugging Face's tokenizer.json (the `tokenizers` format) into
   a tiktoken Encoding, so neither `tokenizers` nor `transformers` is needed. It refuses, with a
   ValueError naming the file and the offending entry, any file it cannot reproduce exactly.

Both behave like LLaDA's tokenizer with add_special_tokens off: no BOS is added (the chat template has
one), special-token strings inside the text become their ids, and NFC is applied to the rest.
Both can be written back with save_pretrained(folder), which from_pretrained(folder) reads: a copy of
the file read (with its tokenizer_config.json and special_tokens_map.json), or, for the tiny
tokenizer, a tokenizer.json generated in the same format (hf_json), so an exported model folder
carries the tokenizer it was trained with.
"""
import base64
import collections
import functools
import json
import os
import re
import unicodedata
from pathlib import Path

import tiktoken

# LLaDA's special tokens, as in the tokenizer.json of the released LLaDA-8B-Instruct (LLaDA: Nie et al.
# 2025, "Large Language Diffusion Models", arXiv 2502.09992). The tiny tokenizer gives them ids 256..261
# in this order; from_pretrained takes their ids from the file's added tokens, never from here.
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"  # also the padding token: answers are padded with EOS up to the generation length
MASK = "<|mdm_mask|>"  # the [M] of masked diffusion
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"  # ends a chat turn
SPECIAL_TOKENS = (BOS, EOS, MASK, START_HEADER, END_HEADER, EOT)


def chat_prompt(message: str) -> str:
    """LLaDA's (Llama-3-style) chat template for one user turn, ready for the assistant's answer."""
    return (f"{BOS}{START_HEADER}user{END_HEADER}\n\n{message}{EOT}"
            f"{START_HEADER}assistant{END_HEADER}\n\n")


def end_of_turn(text: str) -> str:
    """The assistant's text up to its first <|eot_id|> or <|endoftext|>: what follows the chat
    template's prompt, cut where the turn ends (the rest is EOS padding or noise)."""
    ends = [i for i in (text.find(EOT), text.find(EOS)) if i >= 0]
    return text[:min(ends)] if ends else text


class Tokenizer:
    def __init__(self, ranks: dict[bytes, int], special_tokens: dict[str, int], pattern: str,
                 normalize: bool = True, source: str = "tokenizer", source_file=None):
        """ranks: the bytes of every BPE token -> its id (tiktoken's "mergeable ranks": a merge's id is
        its priority); special_tokens: string -> id; pattern: the pre-tokenizer regex; normalize: apply
        NFC; source: names the origin in error messages; source_file: the tokenizer.json it was read
        from, if any (save_pretrained copies it)."""
        self.ranks = ranks  # kept (not copied: tiktoken holds the same dict) to write tokenizer.json
        self.pattern = pattern  # cuts the text into pieces before the BPE runs on each
        self.special_tokens = dict(special_tokens)  # string -> id
        self.normalize = normalize  # apply NFC to ordinary text (LLaDA's normaliser)
        self.source_file = None if source_file is None else Path(source_file)
        # tiktoken runs the BPE on ordinary text and knows the special ids for decoding.
        self.encoding = tiktoken.Encoding(source, pat_str=pattern, mergeable_ranks=ranks,
                                          special_tokens=self.special_tokens)
        self.n_vocab = self.encoding.n_vocab  # largest id + 1
        for s in SPECIAL_TOKENS:
            if s not in self.special_tokens:
                raise ValueError(f"{source}: special token {s!r} is missing from the added tokens")
        self.bos_id, self.eos_id, self.mask_id = (self.special_tokens[s] for s in (BOS, EOS, MASK))
        self.pad_id = self.eos_id
        self.eot_id = self.special_tokens[EOT]
        self.start_header_id = self.special_tokens[START_HEADER]
        self.end_header_id = self.special_tokens[END_HEADER]
        # One regex matching any special-token string. Python tries alternatives left to right, so
        # listing the longest first gives the leftmost-longest match, as Hugging Face does. The
        # capturing group makes re.split keep the matches: [text, special, text, special, ..., text].
        alternatives = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")

    @staticmethod
    @functools.cache  # built once per process; tiny() always returns this same object
    def tiny() -> "Tokenizer":
        """The tiny model's tokenizer: the 256 bytes (ids 0..255), LLaDA's special tokens (256..261),
        then the merges of a small byte-level BPE trained on the tiny tasks (tokenizer_tiny.bpe)."""
        ranks = {bytes([i]): i for i in range(256)}
        specials = {s: 256 + i for i, s in enumerate(SPECIAL_TOKENS)}
        for k, token in enumerate(read_merges(TINY_MERGES_FILE)):
            ranks[token] = 256 + len(SPECIAL_TOKENS) + k  # a merge's rank is its order of creation
        return Tokenizer(ranks, specials, TINY_PATTERN, source="Tokenizer.tiny()")

    @classmethod
    def from_pretrained(cls, path) -> "Tokenizer":
        """path: a folder holding tokenizer.json, or the file itself. Other files in the folder
        (tokenizer_config.json, ...) are not read: every fact needed is in tokenizer.json. The file's
        path is remembered: save_pretrained copies the file rather than writing a new one."""
        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        spec = _read_json(file)
        specials = _added_tokens(spec, file)
        vocab = _base_vocab(spec, specials, file)
        _check_merges(spec["model"].get("merges", []), vocab, file)
        return cls(_byte_ranks(vocab, file), specials, _pattern(spec, file),
                   normalize=_uses_nfc(spec, file), source=str(file), source_file=file)

    def save_pretrained(self, directory) -> None:
        """Write directory/tokenizer.json (creating the folder) so that from_pretrained(directory)
        gives this tokenizer back: the same ids for any text, the same special ids, the same NFC.

        A tokenizer read by from_pretrained copies its file byte for byte, with Hugging Face's side
        files found next to it (tokenizer_config.json, special_tokens_map.json: transformers reads
        the chat template and the special-token roles from them), so the copy is the released file.
        Any other tokenizer (Tokenizer.tiny()) gets a tokenizer.json written by hf_json().
        Each file is written to a .tmp file first, then renamed: a crash never leaves half a file."""
        directory = Path(directory)
        if self.source_file is None:
            text = json.dumps(self.hf_json(), indent=2, ensure_ascii=False) + "\n"
            files = {"tokenizer.json": text.encode("utf-8")}
        else:
            try:  # the file as it is now: it must not have been edited since from_pretrained read it
                files = {"tokenizer.json": self.source_file.read_bytes()}
            except OSError as e:
                raise FileNotFoundError(f"{self.source_file}: cannot copy the tokenizer.json this "
                                        f"tokenizer was read from ({e.strerror})") from None
            for name in HF_SIDE_FILES:
                side = self.source_file.with_name(name)
                if side.is_file():
                    files[name] = side.read_bytes()
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            tmp = directory / (name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, directory / name)

    def hf_json(self) -> dict:
        """This tokenizer as a Hugging Face tokenizer.json (a dict), in the layout of LLaDA's: a
        byte-level BPE whose vocab maps pieces written in GPT-2's byte characters to ids, its merges
        in id order, the special tokens as added tokens (and in the vocab), an NFC normaliser (if
        used), and the pre-tokenizer Split(pattern, Isolated) then ByteLevel without its own regex.

        tiktoken keeps only the ids of the merged tokens, not the pairs they were made from. Each
        merge is written as the pair tiktoken itself joins last when it encodes the token alone
        (_merge_parts): "hello" (id 300), with "he" 260, "ll" 270, "hell" 280, "llo" 290, is built
        h e l l o -> he l l o -> he ll o -> hell o -> hello, so its merge is "hell o". Reading the
        file back gives the same ranks whatever the pairs (from_pretrained reads the vocab and only
        checks the merges); the pairs matter to Hugging Face's tokenizers, which then cut text as
        tiktoken does (checked on the tiny and the tests' fake LLaDA tokenizers)."""
        to_char = bytes_to_unicode()
        tokens = sorted(self.ranks, key=self.ranks.__getitem__)  # in id order = merge order

        def piece(token: bytes) -> str:
            return "".join(to_char[b] for b in token)

        merges = [" ".join(map(piece, _merge_parts(t, self.ranks))) for t in tokens if len(t) > 1]
        # The added tokens go in the vocab too: Hugging Face's reader takes an added token's id from
        # the vocab, else numbers it after the vocab (ignoring the file's "id"), which would be wrong
        # where the special ids sit below the merges (the tiny tokenizer's 256..261).
        specials = sorted(self.special_tokens.items(), key=lambda item: item[1])
        vocab = dict(sorted([*((piece(t), self.ranks[t]) for t in tokens), *specials], key=lambda kv: kv[1]))
        added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for s, i in specials]
        return {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "NFC"} if self.normalize else None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": merges},
        }

    def encode(self, text: str) -> list[int]:
        """Text -> ids. No BOS is added. Special-token strings in the text become their ids.

        We cut the text at the special tokens ourselves instead of using tiktoken's allowed_special,
        because NFC must touch only the ordinary text between them (as in Hugging Face, which also
        splits out added tokens before normalising and pre-tokenizing).
        """
        ids = []
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2 == 1:  # odd positions are the captured special tokens
                ids.append(self.special_tokens[part])
            elif part:
                if self.normalize:
                    part = unicodedata.normalize("NFC", part)
                ids.extend(self.encoding.encode_ordinary(part))
        return ids

    def decode(self, ids) -> str:
        """Ids (a list, or a 1-D tensor) -> text. The bytes of all tokens are joined first and decoded
        once: a character split across tokens (most CJK ones, byte by byte in the tiny tokenizer)
        would come out as replacement characters if each token were decoded on its own."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        # A model's embedding has padding rows past the vocabulary (LLaDA: 126,349 ids, 126,464 rows);
        # an untrained model can sample them. They decode to U+FFFD rather than raising.
        unknown = b"\xef\xbf\xbd"
        chunks = [self.encoding.decode_single_token_bytes(i) if 0 <= i < self.n_vocab else unknown for i in ids]
        return b"".join(chunks).decode("utf-8", errors="replace")

    def chat(self, message: str) -> list[int]:
        """The ids of chat_prompt(message): what the model sees before it writes its answer."""
        return self.encode(chat_prompt(message))


# -----------------------------------------------------------------------------
# The tiny tokenizer's BPE (tasks_tiny.train_tiny_tokenizer trains it on the tiny tasks' text)

# LLaDA's pre-tokenizer pattern (from its tokenizer.json) in classes Python's `re` also understands, so
# training (Python) and encoding (tiktoken) cut text the same way: letters with one optional
# leading symbol or space, single digits (arithmetic needs digits as separate tokens), runs of
# symbols with trailing newlines, whitespace.
TINY_PATTERN = r"""'(?:[sdmt]|ll|ve|re)|[^\r\n\w]?[^\W\d_]+|\d| ?(?:[^\s\w]|_)+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
TINY_MERGES_FILE = Path(__file__).with_name("tokenizer_tiny.bpe")
TINY_MERGES = 175  # 256 bytes + 6 special tokens + 175 merges = 437 ids (model.Config pads to 448 rows)


def train_bpe(texts, n_merges, pattern=TINY_PATTERN) -> list[bytes]:
    """Byte-level BPE (Sennrich et al. 2016, as GPT-2 does it): start from single bytes and
    repeatedly merge the most frequent adjacent pair inside pre-tokenized pieces. Returns the
    merged tokens in order of creation, which is their merge priority (tiktoken's "rank").

    Example: pieces "aaab" x1 and "ab" x3 -> first merge (a, b) (4 times), then (a, a)...
    """
    words = collections.Counter(tuple(bytes([b]) for b in piece.encode())
                                for text in texts for piece in re.findall(pattern, text))
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken by the bytes: deterministic
        merges.append(best[0] + best[1])
        words = collections.Counter({_merge_pair(w, best): c for w, c in words.items()})
    return merges


def _merge_pair(word, pair):
    out, i = [], 0
    while i < len(word):
        if word[i: i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_merges(merges, path):
    """One merged token per line, base64 (tokens may hold spaces and newlines), in merge order."""
    Path(path).write_text("".join(base64.b64encode(m).decode() + "\n" for m in merges))


def read_merges(path) -> list[bytes]:
    try:
        return [base64.b64decode(line, validate=True) for line in Path(path).read_text().split()]
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the tiny tokenizer's merges ({e})") from None


# -----------------------------------------------------------------------------
# Reading Hugging Face's tokenizer.json

@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    r"""GPT-2's byte -> character table used by byte-level BPE files.

    BPE files store tokens as text, so every byte needs a visible character. The 188 printable bytes
    ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 (control bytes, space, ...) get
    chr(256), chr(257), ... in byte order, so space (32) is 'Ġ' = chr(288) and "\n" is 'Ċ'. The dict's
    order (printable first, then the rest) is "GPT-2 order": LLaDA's ids 0..255 follow it, which is
    why space is id 220 and "\n" id 198.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


# Hugging Face's tokenizer files besides tokenizer.json; save_pretrained copies them along with it.
HF_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _merge_parts(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two lower-id tokens a merged token is written as in tokenizer.json's merges: the two that
    tiktoken joins last when it encodes the token on its own (its BPE run on the token's bytes with
    the lower-id tokens only). Hugging Face's BPE joins only the listed pairs; listing these makes it
    take tiktoken's steps. (The split whose larger id is smallest, the other obvious choice, is not
    always the pair tiktoken reaches; Hugging Face would then cut some words differently, e.g.
    " solved" as " solv" + "ed" where tiktoken has one token.) A token that tiktoken never builds on
    its own falls back to that split."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        rank, i = min((ranks.get(a + b, limit), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
        if rank >= limit:  # no join below the token's own id is left
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]  # the lowest id first, the leftmost among equals
    if len(parts) == 2:
        return parts[0], parts[1]
    splits = [(token[:k], token[k:]) for k in range(1, len(token))]
    splits = [(a, b) for a, b in splits if ranks.get(a, limit) < limit and ranks.get(b, limit) < limit]
    if not splits:
        raise ValueError(f"token {token!r} (id {limit}) is not two lower-id tokens joined: "
                         "it cannot be written as a BPE merge")
    return min(splits, key=lambda pair: max(ranks[pair[0]], ranks[pair[1]]))


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: no such file (expected a Hugging Face tokenizer.json)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


def _added_tokens(spec: dict, file: Path) -> dict[str, int]:
    """added_tokens -> {string: id}. All of them are encoded as special tokens. LLaDA marks all 269 as
    special; an added token without the flag would still be cut out of the text before the BPE runs
    (that is what Hugging Face does with any added token), so treating it as special is exact."""
    specials = {}
    for t in spec.get("added_tokens", []):
        for flag in ("lstrip", "rstrip", "single_word"):  # these change how the token matches text
            if t.get(flag):
                raise ValueError(f"{file}: added token {t['content']!r} has {flag}=true (not supported)")
        specials[t["content"]] = t["id"]
    return specials


def _uses_nfc(spec: dict, file: Path) -> bool:
    """True for an NFC normaliser, False for none; anything else cannot be reproduced here."""
    norm = spec.get("normalizer")
    parts = norm.get("normalizers", []) if norm and norm.get("type") == "Sequence" else [norm]
    kinds = {p["type"] for p in parts if p is not None}
    if not kinds <= {"NFC"}:
        raise ValueError(f"{file}: normalizer {norm!r} is not supported (only NFC or none)")
    return bool(kinds)


def _pattern(spec: dict, file: Path) -> str:
    """The pre-tokenizer regex. LLaDA's pre-tokenizer, the only one supported, is
    Sequence[Split(Regex, behavior Isolated), ByteLevel(use_regex false, add_prefix_space false)]:
    cut the text on the regex, keep every match as its own piece, then map bytes to characters.
    That is exactly what tiktoken does with pat_str, so the regex is passed on unchanged."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    types = [s.get("type") for s in steps]
    if types == ["Split", "ByteLevel"]:
        split, byte_level = steps
        if ("Regex" in split.get("pattern", {}) and split.get("behavior") == "Isolated"
                and not split.get("invert") and not byte_level.get("use_regex")
                and not byte_level.get("add_prefix_space")):
            return split["pattern"]["Regex"]
    raise ValueError(f"{file}: pre_tokenizer {pre!r} is not supported (need Sequence[Split(Regex, "
                     "Isolated), ByteLevel(use_regex=false, add_prefix_space=false)])")


def _base_vocab(spec: dict, specials: dict[str, int], file: Path) -> dict[str, int]:
    """model.vocab without the added tokens (some files list them in both places), after checking
    that the model is a plain byte-level BPE."""
    model = spec.get("model", {})
    unsupported = {"type": model.get("type") != "BPE", "byte_fallback": model.get("byte_fallback"),
                   "dropout": model.get("dropout"), "end_of_word_suffix": model.get("end_of_word_suffix"),
                   "continuing_subword_prefix": model.get("continuing_subword_prefix")}
    for key, bad in unsupported.items():
        if bad:
            raise ValueError(f"{file}: model.{key} = {model.get(key)!r} is not supported "
                             "(need a byte-level BPE: type BPE, byte_fallback false)")
    vocab, added_ids = {}, set(specials.values())
    for piece, i in model.get("vocab", {}).items():
        if piece in specials and specials[piece] != i:
            raise ValueError(f"{file}: {piece!r} has id {i} in the vocab "
                             f"but {specials[piece]} in added_tokens")
        if piece not in specials:
            if i in added_ids:
                raise ValueError(f"{file}: vocab piece {piece!r} has id {i}, which is an added token's id")
            vocab[piece] = i
    return vocab


def _check_merges(merges: list, vocab: dict[str, int], file: Path) -> None:
    """Check that tiktoken's BPE gives the same ids as Hugging Face's on this file.

    The two pick the next merge differently. Hugging Face merges the adjacent pair that comes first in
    the "merges" list; tiktoken merges the adjacent pair whose joined bytes have the lowest id, and any
    pair whose joined bytes are in the vocab may merge. They agree when (1) the merged piece's id grows
    with the merge's position in the list, so "lowest id" means "first in the list", and (2) every
    multi-byte piece is the result of a listed merge, so no unlisted piece can appear. Trained BPE
    files meet both (a merge's result gets the next free id); a hand-edited file may not.
    """
    produced, last_id = set(), -1
    for i, merge in enumerate(merges):
        where = f"{file}: merges[{i}] = {merge!r}"
        pair = merge.split(" ") if isinstance(merge, str) else list(merge)  # "a b" or ["a", "b"]
        if len(pair) != 2:
            raise ValueError(f"{where}: a merge must be two pieces")
        a, b = pair
        for piece in (a, b, a + b):
            if piece not in vocab:
                raise ValueError(f"{where}: {piece!r} is not in the vocab")
        if vocab[a + b] <= last_id:
            raise ValueError(f"{where}: the merged piece {a + b!r} has id {vocab[a + b]}, not above the "
                             f"previous merge's {last_id}; tiktoken would merge in a different order")
        produced.add(a + b)
        last_id = vocab[a + b]
    for piece in vocab:
        if len(piece) > 1 and piece not in produced:
            raise ValueError(f"{file}: vocab piece {piece!r} is the result of no merge; "
                             "tiktoken could produce it where Hugging Face would not")


def _byte_ranks(vocab: dict[str, int], file: Path) -> dict[bytes, int]:
    """Vocab pieces (GPT-2 characters) -> their bytes: tiktoken's mergeable ranks."""
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {}
    for piece, i in vocab.items():
        if any(c not in to_byte for c in piece):
            raise ValueError(f"{file}: vocab piece {piece!r} has a character outside the byte-level alphabet")
        ranks[bytes(to_byte[c] for c in piece)] = i
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{file}: the vocab lacks single-byte pieces, first byte {missing[0]} "
                         f"({bytes_to_unicode()[missing[0]]!r}); without them some text cannot be encoded")
    if len(set(ranks.values())) != len(ranks):
        raise ValueError(f"{file}: two vocab pieces share an id")
    return ranks

