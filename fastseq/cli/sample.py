"""``fastseq generate`` and ``fastseq eval`` on a checkpoint, and the sample ``train`` prints."""
import os

import numpy as np

from .args import UsageError, add_common, cleaning, finite, int_at_least, optional_import, print_json, sub

EXAMPLES_GENERATE = """examples:
  fastseq generate fastseq-train --prefix "A class " -n 200
  fastseq generate fastseq-train --prefix "A class " -n 200 --temperature 0.8 --top-k 10 --seed 1
  fastseq generate fastseq-train/model-00005595.safetensors -n 80   # a file of the checkpoint works too
"""

EXAMPLES_EVAL = """examples:
  fastseq eval fastseq-train ./heldout.txt
  fastseq eval fastseq-train timemachine --json
"""

DEFAULT_PREFIX = {"pydoc": "A class "}   # the built-in corpus is about Python, not about "The ..."


def add_parsers(subparsers, corpora):
    ckpt_help = "a checkpoint folder written by fastseq train (or a file in it)"
    g = sub(subparsers, "generate", "generate text from a checkpoint (greedy, or sampled with a temperature)",
            EXAMPLES_GENERATE)
    g.add_argument("checkpoint", help=ckpt_help)
    g.add_argument("--prefix", help="the text to warm up on (default: 'A class ' for pydoc, else 'The ')")
    g.add_argument("-n", type=int_at_least(0), default=100, help="tokens to generate (default: 100)")
    g.add_argument("--temperature", type=finite(0, lo_open=False), default=0.0,
                   help="0: greedy (the book's predict); > 0: sample (default: 0)")
    g.add_argument("--top-k", type=int_at_least(0), default=0,
                   help="sample from the k most likely only (default: 0, all)")
    g.add_argument("--seed", type=int_at_least(0), default=0, help="random seed of the sampling draws (default: 0)")
    g.add_argument("--backend", choices=("cpp", "numpy"))
    add_common(g, threads=True)
    g.set_defaults(func=cmd_generate)

    v = sub(subparsers, "eval", "perplexity of a checkpoint's model on a text", EXAMPLES_EVAL)
    v.add_argument("checkpoint", help=ckpt_help)
    v.add_argument("text", help=f"a text file or corpus name ({corpora}); tokenized as the model was trained")
    v.add_argument("--backend", choices=("cpp", "numpy"))
    add_common(v, threads=True)
    v.set_defaults(func=cmd_eval)


def load_checkpoint(path, backend=None):
    """fastseq.checkpoint.load of a run folder, or of the folder of a file in it (weights, resume state)."""
    from .. import checkpoint

    optional_import("safetensors.numpy", "reading checkpoints")
    if os.path.isfile(path) and os.path.exists(os.path.join(os.path.dirname(path) or ".", checkpoint.META_FILE)):
        path = os.path.dirname(path) or "."
    return checkpoint.load(path, backend=backend)


def _tokens(token, text):
    from ..text import tokenize_text
    return tokenize_text(text, token)


def check_prefix(vocab, token, prefix):
    """A prefix the user gave: every token must be in the vocabulary (else it would silently read <unk>)."""
    toks = _tokens(token, prefix)
    if not toks:
        raise UsageError(f"--prefix {prefix!r}: has no tokens")
    unknown = sorted({t for t in toks if t not in vocab.token_to_idx})
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise UsageError(f"--prefix {prefix!r}: {shown} not in the model's vocabulary of {len(vocab)} "
                         f"{token}s (they would all be read as <unk>)")


def _default_prefix(vocab, token, corpus):
    """'A class ' for pydoc, else 'The ' (the, for words); lower case or the first token where those are unknown."""
    prefix = DEFAULT_PREFIX.get(corpus) or ("The " if token == "char" else "the")
    if token == "word":
        prefix = prefix.strip()
    for p in (prefix, prefix.lower()):
        if all(t in vocab.token_to_idx for t in _tokens(token, p)):
            return p
    return vocab.idx_to_token[1] if len(vocab) > 1 else vocab.idx_to_token[0]


def sample(model, vocab, token, prefix, n, seed=0, temperature=0.8, top_k=0, corpus=None):
    """fastseq.training.predict (the one sampler: never <unk>) from a checked prefix; a JSON-able record."""
    from ..training import predict

    if prefix is None:
        prefix = _default_prefix(vocab, token, corpus)
    else:
        check_prefix(vocab, token, prefix)
    toks = _tokens(token, prefix)
    gen = predict(toks, n, model, vocab, temperature=temperature, top_k=top_k, rng=seed)[len(toks):]
    text = "".join(gen) if token == "char" else "".join(" " + t for t in gen)
    return {"prefix": prefix, "text": text, "temperature": temperature, "top_k": top_k, "seed": seed,
            "ids": [int(i) for i in vocab.encode(gen)] if gen else []}


def cmd_generate(args):
    ck = load_checkpoint(args.checkpoint, args.backend)
    token = ck.hparams.get("token", "char")
    s = sample(ck.model, ck.vocab, token, args.prefix, args.n, seed=args.seed,
               temperature=args.temperature, top_k=args.top_k, corpus=ck.hparams.get("corpus"))
    if args.json:
        print_json(dict(s, checkpoint=args.checkpoint))
    else:
        print(s["prefix"] + s["text"])
    return 0


def cmd_eval(args):
    from ..training import evaluate
    from .corpus import tokens_of

    ck = load_checkpoint(args.checkpoint, args.backend)
    hp = ck.hparams
    token = hp.get("token", "char")
    tokens, _ = tokens_of(args.text, token, cleaning(hp.get("cleaning")))
    ids = ck.vocab.encode(tokens)
    if len(ids) < 2:
        raise UsageError(f"{args.text}: needs at least 2 tokens, has {len(ids)}")
    ppl, n = evaluate(ck.model, ids), len(ids) - 1   # the one evaluator: the API's number to the last digit
    oov = int(np.sum(ids[1:] == ck.vocab.unk))
    result = {"checkpoint": args.checkpoint, "text": args.text, "token": token, "perplexity": ppl,
              "tokens": n, "oov": oov}
    if args.json:
        print_json(result)
    else:
        print(f"{args.text}: {n:,} {token}s predicted ({oov:,} are <unk>), perplexity {ppl:.4f}")
    return 0
