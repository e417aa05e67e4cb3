"""The data: synthetic logs (synth.py), preparing a raw log into sharded Parquet (prepare.py,
readers.py, writer.py, schema.py), this rank's stream of training samples (stream.py,
samples.py, prefetch.py), and what a job reads of it (job_data.py) with the batch recipe
(batch_maker.py, batch.py)."""
