#!/usr/bin/python3
"""Independent reference tokenizer for tests/test_tokenizer.cpp.

Reads the vocabulary straight from a GGUF file (its own small reader) and encodes test cases:
  - "llama" (SentencePiece) vocabularies: builds a SentencePiece ModelProto from the GGUF
    tokens/scores/types and encodes with Google's sentencepiece library (python3-sentencepiece);
  - "gpt2" (byte-level BPE) vocabularies: a straightforward Python implementation written from
    the published algorithm (GPT-2's encoder.py: regex pre-tokenization with the `regex`
    module, byte -> printable unicode mapping, repeated lowest-rank pair merging).
Special tokens are cut out of the text first with llama.cpp's rule (longest first; user-defined
always, control/unknown only with parse_special), and SentencePiece adds its dummy "▁" prefix to
every raw-text fragment, as llama.cpp does.

usage: tokenizer_ref.py VOCAB.gguf CASES OUT
  CASES: one case per line, "ADD_BOS PARSE_SPECIAL HEX" (flags 0/1, HEX = UTF-8 text in hex)
  OUT:   one line per case: the token ids separated by spaces
Exit status 3 when a needed Python module is missing (the C++ test skips then).
"""
import struct
import sys

try:
    import regex
except ImportError:
    print("tokenizer_ref.py: the python3 'regex' module is missing", file=sys.stderr)
    sys.exit(3)

TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = 1, 2, 3, 4, 5, 6


# --- GGUF metadata reader (header and key/values only) -------------------------------------
def read_gguf_metadata(path):
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, data, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return v

    def take_str():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n]
        pos += n
        return s.decode("utf-8", "surrogateescape")

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def take_value(t):
        if t == 8:
            return take_str()
        if t == 9:
            et = take("I")
            n = take("Q")
            return [take_value(et) for _ in range(n)]
        return take(scalar[t])

    if data[:4] != b"GGUF":
        raise ValueError(path + ": not a GGUF file")
    pos = 4
    take("I")  # version
    take("Q")  # tensor count
    n_kv = take("Q")
    kv = {}
    for _ in range(n_kv):
        key = take_str()
        kv[key] = take_value(take("I"))
    return kv


# --- special tokens (llama.cpp's partition rule) -------------------------------------------
def special_tokens(tokens, types):
    ids = [i for i, t in enumerate(types)
           if t in (TYPE_CONTROL, TYPE_UNKNOWN, TYPE_USER_DEFINED) and tokens[i]]
    ids.sort(key=lambda i: -len(tokens[i].encode("utf-8")))  # stable: ties keep id order
    return ids


def partition(text, tokens, types, specials, parse_special):
    frags = [text]  # str = raw text, int = special token id
    for sid in specials:
        if not parse_special and types[sid] != TYPE_USER_DEFINED:
            continue
        needle = tokens[sid]
        out = []
        for f in frags:
            if isinstance(f, int):
                out.append(f)
                continue
            parts = f.split(needle)
            for k, p in enumerate(parts):
                if k > 0:
                    out.append(sid)
                if p:
                    out.append(p)
        frags = out
    return frags


# --- SentencePiece via the official library ------------------------------------------------
def pb_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_field(num, wire, payload):
    return pb_varint((num << 3) | wire) + payload


def pb_bytes(num, b):
    return pb_field(num, 2, pb_varint(len(b)) + b)


def pb_uint(num, v):
    return pb_field(num, 0, pb_varint(v))


def spm_model_proto(tokens, scores, types, unk_id, add_dummy_prefix):
    """A sentencepiece ModelProto (BPE, byte fallback, identity normalizer) as bytes."""
    out = bytearray()
    for i, (t, s, ty) in enumerate(zip(tokens, scores, types)):
        # sentencepiece allows exactly one UNKNOWN piece; other "unknown" entries (padding
        # placeholders) become CONTROL, which sentencepiece never produces from text either.
        if ty == TYPE_UNKNOWN and i != unk_id:
            ty = TYPE_CONTROL
        if i == unk_id:
            ty = TYPE_UNKNOWN
        if ty not in (1, 2, 3, 4, 5, 6):
            ty = TYPE_NORMAL
        piece = pb_bytes(1, t.encode("utf-8", "surrogateescape")) + pb_field(2, 5, struct.pack("<f", s)) + pb_uint(3, ty)
        out += pb_bytes(1, piece)
    trainer = pb_uint(3, 2) + pb_uint(35, 1) + pb_uint(40, unk_id)  # model_type=BPE, byte_fallback, unk_id
    out += pb_bytes(2, trainer)
    normalizer = (pb_bytes(1, b"identity") + pb_uint(3, 1 if add_dummy_prefix else 0) +
                  pb_uint(4, 0) + pb_uint(5, 1))
    out += pb_bytes(3, normalizer)
    return bytes(out)


class SpmRef:
    def __init__(self, kv):
        try:
            import sentencepiece
        except ImportError:
            print("tokenizer_ref.py: python3-sentencepiece is missing", file=sys.stderr)
            sys.exit(3)
        self.tokens = kv["tokenizer.ggml.tokens"]
        self.types = kv.get("tokenizer.ggml.token_type", [TYPE_NORMAL] * len(self.tokens))
        scores = kv.get("tokenizer.ggml.scores", [0.0] * len(self.tokens))
        self.bos = kv.get("tokenizer.ggml.bos_token_id", 1)
        unk = kv.get("tokenizer.ggml.unknown_token_id", 0)
        prefix = kv.get("tokenizer.ggml.add_space_prefix", True)
        self.sp = sentencepiece.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(spm_model_proto(self.tokens, scores, self.types, unk, prefix))
        self.specials = special_tokens(self.tokens, self.types)

    def encode(self, text, add_bos, parse_special):
        ids = [self.bos] if add_bos else []
        for f in partition(text, self.tokens, self.types, self.specials, parse_special):
            ids += [f] if isinstance(f, int) else self.sp.EncodeAsIds(f)
        return ids


# --- byte-level BPE, written from GPT-2's encoder.py ---------------------------------------
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
LLAMA3 = (r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"""
          r"""\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
PRE = {
    "default": [GPT2], "gpt-2": [GPT2], "gpt-neox": [GPT2], "olmo": [GPT2],
    "llama-bpe": [LLAMA3],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
    "starcoder": [r"\p{N}", GPT2],
    "deepseek-coder": [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}"],
    "qwen2": [QWEN2],
}
IGNORE_MERGES = {"llama-bpe"}


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class BpeRef:
    def __init__(self, kv):
        self.tokens = kv["tokenizer.ggml.tokens"]
        self.types = kv.get("tokenizer.ggml.token_type", [TYPE_NORMAL] * len(self.tokens))
        self.ids = {}
        for i, t in enumerate(self.tokens):
            self.ids.setdefault(t, i)
        self.ranks = {}
        for r, m in enumerate(kv["tokenizer.ggml.merges"]):
            a, b = m.split(" ", 1)
            self.ranks.setdefault((a, b), r)
        self.bos = kv.get("tokenizer.ggml.bos_token_id", -1)
        pre = kv.get("tokenizer.ggml.pre", "default")
        self.regexes = [regex.compile(p) for p in PRE[pre]]
        self.ignore_merges = pre in IGNORE_MERGES
        self.byte_encoder = bytes_to_unicode()
        self.specials = special_tokens(self.tokens, self.types)
        self.cache = {}

    def pretokenize(self, text):
        pieces = [text]
        for rx in self.regexes:
            out = []
            for p in pieces:
                pos = 0
                for m in rx.finditer(p):
                    if m.start() > pos:
                        out.append(p[pos:m.start()])
                    out.append(m.group())
                    pos = m.end()
                if pos < len(p):
                    out.append(p[pos:])
            pieces = out
        return pieces

    def bpe(self, word):
        mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
        if self.ignore_merges and mapped in self.ids:
            return [self.ids[mapped]]
        parts = list(mapped)
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return [self.ids[p] for p in parts]

    def encode(self, text, add_bos, parse_special):
        ids = [self.bos] if add_bos and self.bos >= 0 else []
        for f in partition(text, self.tokens, self.types, self.specials, parse_special):
            if isinstance(f, int):
                ids.append(f)
                continue
            for w in self.pretokenize(f):
                if w not in self.cache:
                    self.cache[w] = self.bpe(w)
                ids += self.cache[w]
        return ids


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    kv = read_gguf_metadata(sys.argv[1])
    model = kv["tokenizer.ggml.model"]
    ref = SpmRef(kv) if model == "llama" else BpeRef(kv)
    with open(sys.argv[2], encoding="ascii") as f, open(sys.argv[3], "w") as out:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            add_bos, parse_special, hx = line.split(" ") if line.count(" ") == 2 else (*line.split(" "), "")
            text = bytes.fromhex(hx).decode("utf-8")
            ids = ref.encode(text, add_bos == "1", parse_special == "1")
            out.write(" ".join(str(i) for i in ids) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
