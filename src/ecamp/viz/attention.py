"""GLoRIA's exported attention maps over their images (one PNG grid).

These are the SR guidance maps of ``ecamp attention export``; the paper's Figure 4 (ECAMP's
own attention after pre-training) is ``ecamp pretrain show``.
"""

from __future__ import annotations

from pathlib import Path

from ecamp.errors import UserError


def show(
    guidance: str | Path,
    output: str | Path,
    manifest: str | None = None,
    ids: list[str] | None = None,
    n: int = 8,
    cols: int = 4,
) -> Path:
    """Overlay ``n`` maps (or those of ``ids``) on their images into one PNG grid."""
    from ecamp.data.guidance import GuidanceStore
    from ecamp.data.images import load_image
    from ecamp.data.manifest import read_table, resolve_image
    from ecamp.eval.localization import manifest_boxes
    from ecamp.viz.overlays import overlay_grid

    store = GuidanceStore(guidance)
    source = manifest or store.meta.get("manifest")
    if not source:
        raise UserError("the guidance export names no manifest; give --manifest")
    df = read_table(source)
    df["id"] = df["id"].astype(str)
    by_id = df.set_index("id", drop=False)
    chosen = ids or store.ids_with_maps()[:n]
    if not chosen:
        raise UserError(f"{guidance} holds no maps to show")
    boxes = manifest_boxes(df)
    box_of = dict(zip(df["id"], boxes)) if boxes is not None else {}
    images, maps, titles, draw = [], [], [], []
    for key in chosen:
        if key not in by_id.index:
            raise UserError(f"id {key!r} is not in {source}")
        m = store.map(key)
        if m is None:
            raise UserError(f"id {key!r} has no map in {guidance}")
        images.append(load_image(resolve_image(str(by_id.loc[key, "image"]), df.attrs.get("root"))))
        maps.append(m)
        titles.append(store.sentence(key) or ", ".join(store.entities(key)))
        ents = set(store.entities(key))
        draw.append([b for b in box_of.get(key, []) if b[4] in ents])
    return overlay_grid(images, maps, titles, output, boxes=draw, cols=cols)


__all__ = ["show"]
