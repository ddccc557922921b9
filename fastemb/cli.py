"""``python -m fastemb``: export a model to a bundle, describe a bundle, encode a file of texts, serve a bundle."""

from __future__ import annotations

import argparse
import json
import sys

from fastemb._cli import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastemb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="turn a model directory into a bundle",
                       description="Export a sentence-transformers, Hugging Face BERT-family or distill TextCNN "
                                   "directory to a fastemb bundle, checked against the model in torch.")
    p.add_argument("src", help="model directory")
    p.add_argument("out", help="bundle directory to create")
    p.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantization (CPU)")
    p.add_argument("--optimize", action="store_true", help="apply onnxruntime's transformer fusions")
    p.add_argument("--fp16", action="store_true", help="float16 graph for GPU targets")
    p.add_argument("--pooling", choices=["cls", "mean", "max"], help="override the model's pooling")
    p.add_argument("--max-length", type=int, help="truncate texts at this many tokens")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the torch model")
    p.add_argument("--eval-pairs", metavar="FILE",
                   help="scored sentence pairs the int8 check compares Spearman on: STS-B format or "
                        "'sentence1<TAB>sentence2<TAB>score' lines (default: the shipped STS-B dev split)")
    p.add_argument("--max-int8-drop", type=float, metavar="POINTS",
                   help="largest Spearman drop (x 100) the int8 check allows (default 1.0)")
    p.add_argument("--tensorrt", action="store_true", help="also build model.plan for this machine's GPU (needs fastemb[tensorrt])")
    p.add_argument("--tensorrt-precision", choices=["fp32", "fp16", "int8"], default="fp16",
                   help="engine precision; pooling and normalization stay float32 (default fp16)")
    p.add_argument("--tensorrt-batch", default="1,32,128", metavar="MIN,OPT,MAX", help="batch range of the engine's profile")
    p.add_argument("--tensorrt-seq", metavar="MIN,OPT,MAX", help="sequence range of the profile (default 1,128,max_length)")
    p.add_argument("--tensorrt-workspace", type=float, default=4.0, metavar="GB", help="TensorRT builder workspace")

    p = sub.add_parser("info", help="print a bundle's manifest")
    p.add_argument("bundle")

    p = sub.add_parser("encode", help="encode a file of texts to .npy or .parquet",
                       description="Encode every row of a text file (one row per \\n-terminated line; \\r\\n "
                                   "accepted; form feeds, U+2028 and the like stay inside their line), a JSON Lines "
                                   "file (.jsonl, .ndjson: the text in --field) or a Parquet file (column --field). "
                                   "Streams: memory stays bounded whatever the input's size. A row that cannot be "
                                   "encoded is named on stderr and gets NaN (.npy) or a null embedding and its "
                                   "error (.parquet); the other rows are written and the exit status is 1.")
    p.add_argument("bundle")
    p.add_argument("--input", required=True, metavar="PATH", help="text, JSON Lines or Parquet file")
    p.add_argument("--output", required=True, metavar="OUT",
                   help="OUT.npy (float32 [n, dim], row i = input row i) or OUT.parquet (row, embedding, error)")
    p.add_argument("--format", choices=["text", "jsonl", "parquet"], help="input format (default: by suffix)")
    p.add_argument("--field", default="text", help="JSON Lines field / Parquet column holding the text")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-normalize", action="store_true")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="encode on Ray (needs fastemb[ray]): a local Ray, or the cluster at ADDRESS "
                        "(auto, ray://HOST:10001, ...); the input must be readable from the cluster's nodes")
    p.add_argument("--concurrency", type=int, help="Ray actors (default: the cluster's CPUs / --num-cpus-per-actor)")
    p.add_argument("--num-cpus-per-actor", type=float, default=1, help="CPUs (and ONNX Runtime threads) per actor")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("serve", help="serve a bundle over HTTP (OpenAI / TEI embeddings, search, similar)",
                       description="Serve a bundle over HTTP: POST /v1/embeddings (OpenAI), /embed (TEI), "
                                   "/search, /similar; GET /health, /info, /metrics. Needs fastemb[serve].")
    from fastemb.serve import add_arguments

    add_arguments(p)

    args = parser.parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.command == "export":
        from fastemb.export import export

        if args.tensorrt:  # fail before the export, not after it
            from fastemb.export.tensorrt import preflight

            preflight(args.tensorrt_batch, args.tensorrt_seq)
        export(args.src, args.out, quantize=args.quantize, optimize=args.optimize, fp16=args.fp16,
               pooling=args.pooling, max_length=args.max_length, overwrite=args.overwrite, check=not args.no_check,
               eval_pairs=args.eval_pairs, max_int8_drop=args.max_int8_drop)
        if args.tensorrt:
            from fastemb.export.tensorrt import export_tensorrt

            export_tensorrt(args.out, batch=args.tensorrt_batch, seq=args.tensorrt_seq,
                            precision=args.tensorrt_precision, workspace_gb=args.tensorrt_workspace)
    elif args.command == "info":
        from fastemb.bundle import Bundle

        b = Bundle(args.bundle)
        print(json.dumps({"bundle": str(b.dir), **json.loads(b.manifest.to_json())}, indent=2))
    elif args.command == "encode":
        return _encode(args)
    elif args.command == "serve":
        from fastemb.serve import config_from_args, run

        return run(config_from_args(args), args.log_level)
    return 0


def _encode(args: argparse.Namespace) -> int:
    from fastemb.bulk import encode_file

    report = encode_file(args.bundle, args.input, args.output, fmt=args.format, field=args.field,
                         batch_size=args.batch_size, normalize=not args.no_normalize, progress=not args.no_progress,
                         ray_address=args.ray, concurrency=args.concurrency,
                         num_cpus_per_actor=args.num_cpus_per_actor)
    for line in report.first_failures:
        print(f"error: {line}", file=sys.stderr)
    if report.failed > len(report.first_failures):
        print(f"error: ... and {report.failed - len(report.first_failures)} more", file=sys.stderr)
    print(f"wrote {args.output}: {report.rows} rows, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
