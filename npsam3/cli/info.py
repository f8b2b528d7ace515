"""``npsam3 info``: what a bundle holds."""


def add_parser(sub):
    i = sub.add_parser("info", help="describe a bundle",
                       description="Check a bundle's files against its manifest (sha256) and "
                       "describe the model it holds.")
    i.add_argument("bundle", metavar="BUNDLE", help="bundle folder made by npsam3-convert")
    i.set_defaults(run=run)


def run(args):
    from ..bundle import read_manifest
    from ..kernels import describe

    m = read_manifest(args.bundle)
    d = m.get("detector", {})
    model = m.get("model", {})
    weights = m.get("weights") or {}
    lines = [f"npsam3 bundle {args.bundle} (format {m['format_version']}, "
             f"made by npsam3 {m.get('npsam3_version', '?')})"]
    if model:
        lines.append("model: " + ", ".join(f"{k} {v}" for k, v in model.items()))
    if weights.get("random"):
        lines.append(f"weights: RANDOM (seed {weights.get('seed')}): a demo bundle, its masks "
                     "are meaningless")
    elif weights.get("checkpoint"):
        lines.append(f"weights: from {weights['checkpoint']}")
    img = m.get("image_trunk") or m.get("image_encoder")  # format 1: one image encoder graph
    if img:
        lines.append(f"image encoder: {img['file']}, {img['resolution']} x {img['resolution']} input, "
                     f"{img.get('preprocessing', '')}")
    if m["format_version"] >= 2:
        lines.append("interactive predictor (points, boxes, masks): " + (
            f"yes, {m['tracker']['file']} + {m['tracker_neck']['file']}" if m.get("interactive")
            else "no, detection-only (the checkpoint had no tracker neck and SAM heads, or "
                 "--no-interactive)"))
    else:
        lines.append("interactive predictor: no (a format-1 bundle; convert again for it)")
    if "text_encoder" in m:
        lines.append(f"text encoder: {m['text_encoder']['file']}, "
                     f"{m['text_encoder']['context_length']} tokens per prompt")
    if d:
        lines.append(f"detector: d_model {d['d_model']}, {d['heads']} heads, {d['encoder_layers']} "
                     f"fusion-encoder / {d['decoder_layers']} decoder / {d['geometry_layers']} "
                     f"geometry layers, FFN {d['dim_feedforward']}, {d['num_queries']} queries, "
                     f"presence token {'yes' if d['presence_token'] else 'no'}, boxRPB {d['box_rpb']}")
    for name, err in m.get("verification", {}).items():
        lines.append(f"verified at export: {name} max relative error {err:.1e}")
    lines.append(describe())
    for name, f in m["files"].items():
        lines.append(f"file {name}: {f['bytes'] / 2**20:.1f} MiB, sha256 {f['sha256'][:16]}... (checked)")
    print("\n".join(lines))
    return 0
