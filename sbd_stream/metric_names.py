"""The names the service exports (``metrics.py``), apart so the registry's module stays readable.

Every name here is a row of docs/service.md's metrics table and is really exported (tests check both);
dashboards must only reference these.
"""

from __future__ import annotations

__all__ = ["EXPORTED_NAMES", "LAZY_NAMES", "MALFORMED_REASONS", "starting_text"]  # and the HELP_* texts

LAZY_NAMES = ("sbd_stage_errors_total",)
"""Labelled by a reason known only when it happens (an exception's class): its series appear with the
first event, so ``increase()`` misses that event; ``sbd_stage_item_errors_total{stage}`` counts the same
items, every stage at 0 from the start, for dashboards and alerts."""

EXPORTED_NAMES = (
    "sbd_frames_received_total", "sbd_frames_denoised_total", "sbd_frames_published_total",
    "sbd_publish_dropped_total", "sbd_frames_recorded_total", "sbd_frames_skipped_total",
    "sbd_frames_malformed_total", "sbd_frames_duplicate_total", "sbd_frames_out_of_order_total",
    "sbd_frames_missing_total", "sbd_sequence_gaps_total", "sbd_sequence_restarts_total",
    "sbd_series_messages_total", "sbd_record_dropped_total", "sbd_record_errors_total",
    "sbd_record_direct_chunks_total", "sbd_recorded_clipped_pixels_total", "sbd_denoise_overflow_total",
    "sbd_denoise_errors_total", "sbd_queue_depth", "sbd_batch_frames", "sbd_stage_latency_seconds",
    "sbd_end_to_end_latency_seconds", "sbd_lane_latency_seconds", "sbd_frames_completed_total",
    "sbd_complete_backlog_frames", "sbd_frames_left_for_offline_total", "sbd_engine_info",
    "sbd_dose_out_of_range", "sbd_dose_factor", "sbd_bin_factor", "sbd_stage_errors_total",
    "sbd_stage_item_errors_total", "sbd_stage_restarts_total", "sbd_stage_up", "sbd_frames_nonfinite_total",
    "sbd_pixels_nonfinite_total", "sbd_frames_saturated_total", "sbd_pixels_saturated_total",
    "sbd_frames_hot_total", "sbd_pixels_hot_total", "sbd_frames_too_bright_total",
    "sbd_input_disconnects_total", "sbd_input_reconnects_total", "sbd_record_rolls_total",
    "sbd_record_files_closed_total", "sbd_record_open_files", "sbd_workers", "sbd_worker_info",
    "sbd_worker_frames_total", "sbd_worker_batches_total", "sbd_worker_busy_seconds_total",
    "sbd_worker_errors_total", "sbd_frames_failed_total", "sbd_reorder_held",
    "sbd_dose_mismatch_frames_total", "sbd_measured_dose_ratio", "sbd_published_clipped_pixels_total",
    "sbd_blank_frames_total", "sbd_evidence_frames_left_out_total", "sbd_vacuum_not_flat_frames_total",
    "sbd_fixed_vacuum_mismatch_frames_total", "sbd_open_files", "sbd_open_files_limit",
    "sbd_publish_subscriber_full_total", "sbd_publish_handshake_failures_total", "sbd_starting",
    "sbd_publish_meta_dropped_total",
    "sbd_build_info",
)  # fmt: skip

MALFORMED_REASONS = (
    "bad_acq", "bad_array", "bad_blob", "bad_cbor", "bad_columns", "bad_compression", "bad_dtype",
    "bad_encoding", "bad_engine", "bad_exposure", "bad_header_detail", "bad_htype", "bad_json",
    "bad_length", "bad_meta", "bad_n_frames", "bad_part", "bad_parts", "bad_seq", "bad_series", "bad_shape",
    "bad_topic", "bad_ts", "bad_type", "bad_version", "decompress_failed", "header_too_large",
    "internal_error", "oversized", "too_large", "unexpected_topic", "unknown_field",
)  # fmt: skip
"""Every ``reason`` of ``sbd_frames_malformed_total`` (wire v1, DECTRIS, the receiver's own): exported at
0 from the start, because Prometheus sees no increase in a series whose first sample is already the
burst (a dashboard's ``increase()`` read 0 after the first malformed messages of a reason). A test
checks that every reason the code can count is listed here."""

# help texts of the longer-winded metrics (metrics.py registers them)
HELP_STARTING = "1 while the service starts (its engine loads; /healthz answers 503), 0 once it runs"
HELP_BUILD = "1, labelled with the sbd-stream version running"
HELP_MISMATCH = "Frames whose estimated vacuum left 0.8-1.25x the configured dose (service/dose_check.py)"
HELP_DOSE_RATIO = "The last frame's estimated vacuum level / the configured one (likelihood on; 0 before)"
HELP_FIXED = "Frames whose flat-vacuum level left 0.9-1.1x the fixed one (service/frame_flags.py)"
HELP_BLANK = "Frames without beam: mean under 2 % of the dose and 0.01 counts/px (zeros out; meta.blank)"
HELP_LEFT_OUT = "Evidence frames left out of a frame's LLR: blank, or dose outside 0.8-1.25x of the frame's"
HELP_NOT_FLAT = "Frames whose blocks taken as vacuum are not flat: level unreliable (meta.vacuum_not_flat)"
HELP_EDGE = {  # the pixels service/edge.py replaces (or not) before denoising, as docs/service.md names them
    "nonfinite": "Float frames holding NaN/Inf pixels (replaced by the frame's finite mean before denoising)",
    "nonfinite_px": "NaN/Inf pixels replaced before denoising",
    "saturated": "Unsigned-integer frames holding pixels at the dtype's maximum (defective / gap / "
    "saturated; replaced by the frame's mean before denoising)",
    "saturated_px": "Pixels at the dtype's maximum replaced before denoising",
    "hot": "Frames holding hot pixels (counts impossible at the configured dose; replaced by the mean)",
    "too_bright": "Frames over 5x the configured dose with pixels at the hot threshold: a wrong dose (kept)",
}


def starting_text(version: str) -> bytes:
    """What ``/metrics`` serves while the engine loads (``httpd.StartingHandler``): ``sbd_starting 1``
    and the build info, the two series the running service's registry carries too (``sbd_starting 0``),
    so a scrape is answered at once and a dashboard tells "starting" from "down"."""
    return (
        f"# HELP sbd_starting {HELP_STARTING}\n# TYPE sbd_starting gauge\nsbd_starting 1.0\n"
        f"# HELP sbd_build_info {HELP_BUILD}\n# TYPE sbd_build_info gauge\n"
        f'sbd_build_info{{version="{version}"}} 1.0\n'
    ).encode()
