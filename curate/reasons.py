"""Rejection reason codes: the one place they are defined and documented.

Codes are short, stable strings; users' SQL depends on them. Add new codes here, never
rename one. ``curate reasons`` prints this table.
"""

from __future__ import annotations

REASONS: dict[str, str] = {
    "bad_url": "The URL is empty or not http(s); it was never requested.",
    "download_error": "The download failed (HTTP error, refused connection, DNS failure, TLS error, "
    "redirect loop or too many redirects) or acquire wrote no record for the row.",
    "decode_error": "The bytes are not a readable image (corrupt, truncated, HTML, too large to decode safely).",
    "blocked_url": "The URL's domain or pattern is on the recipe's url_filter blocklist (checked before "
    "acquire, so the URL is never requested, and again at decide).",
    "too_small": "The image's smaller side is below the recipe's min_side.",
    "file_too_small": "The image file has fewer bytes than the recipe's min_bytes.",
    "too_large": "The image has more pixels than the recipe's max_pixels.",
    "bad_aspect": "The image's aspect ratio (long side / short side) exceeds max_aspect.",
    "caption_short": "The caption has fewer characters or words than the recipe asks.",
    "caption_long": "The caption has more characters than the recipe allows.",
    "caption_boilerplate": "The caption is boilerplate, not a description: a file name, a bare URL, "
    "stock alt text, repeated tokens or no letters (samples.caption_boilerplate says which).",
    "wrong_language": "fastText's language for the caption is not one the recipe keeps (and scores at "
    "least min_other_score; with rule calibrated, min_other_score_short on a short caption, or the caption's "
    "letters are in a script no kept language uses; with rule vocab, also when the caption's words are another "
    "language's, and never when they are English), or it is a kept one scoring below min_lang_score.",
    "low_clip_score": "The image-caption CLIP score is below the recipe's min_score, or outside "
    "the keep_top fraction of the rows that reached the clip_score policy.",
    "dup_near": "A perceptual near-duplicate (pHash within the near_dedup policy's k bits, confirmed by "
    "the colour signature unless verify_colour is null) of a kept sample; dup_of names it.",
    "dup_semantic": "A semantic duplicate (CLIP image embedding with cosine > 1 - eps to the very kept "
    "sample dup_of names, SemDeDup).",
    "eval_contaminated": "A near-duplicate of an image in the evaluation set given to the "
    "decontaminate policy; dup_of is 'eval:' + that image's id.",
    "no_concept": "The caption matches no concept of the balancing vocabulary (MetaCLIP drops them).",
    "balanced_out": "Sampled out by concept balancing: every concept the caption matches is a head "
    "concept above the cap t, and none selected the row (MetaCLIP's rule).",
    "download_timeout": "The download did not finish within acquire.timeout seconds (wall clock, all "
    "redirect hops, headers and body together).",
    "too_large_download": "The response body is larger than acquire.max_bytes (refused on its "
    "Content-Length, or cut off once the cap was exceeded).",
    "blocked_address": "The URL's host, or a redirect hop's, resolves to a loopback, private, link-local, "
    "multicast, reserved or shared address; refused before connecting (acquire.allow_private_addresses).",
    "blocked_redirect": "A redirect pointed to a non-http(s) URL (ftp://, file://, ...); not followed.",
    "robots_disallowed": "The server's X-Robots-Tag header carries a directive listed in "
    "acquire.disallowed_header_directives (noai, noimageai, ... ; scoped to user_agent_token too).",
    "no_image": "The input's shard has a record for the sample but no image (a WebDataset key with a .txt "
    "or .json and no .jpg/.jpeg/.png/.webp member); nothing was downloaded.",
    "blocklisted": "The image's sha256, or its pHash within the blocklist policy's k bits, is on the recipe's "
    "hash blocklist (the list's own sha256 is recorded in the manifest; the list is never copied).",
    "dup_exact": "Same bytes (sha256) as a kept sample, or the same values of the exact_dedup "
    "policy's `by` columns; dup_of names the kept key.",
}


DECLARED: dict[str, str] = {}
"""Codes a recipe defines itself (the ``head`` policy's ``reason``), declared in this process by the policy
that uses them; the recipe is their documentation. They never shadow a code of :data:`REASONS`."""


def declare(reason: str, meaning: str) -> str:
    """Accept ``reason`` as a recipe-defined code in this process (see :data:`DECLARED`)."""
    if reason in REASONS:
        raise KeyError(f"reason code {reason!r} is built in; a recipe-defined code needs its own name")
    DECLARED[reason] = meaning
    return reason


def check(reason: str) -> str:
    """Return ``reason`` if it is a documented or declared code, else raise ``KeyError``."""
    if reason not in REASONS and reason not in DECLARED:
        raise KeyError(f"undocumented reason code {reason!r}: add it to curate/reasons.py")
    return reason
