"""The teacher: :mod:`~distill_jax.teacher.scorer` (a cross-encoder scoring (query, passage) pairs, bucketed and
mesh-sharded) and :mod:`~distill_jax.teacher.answer_key` (``distill-jax score``: a candidate file in, a
teacher-score dataset out, shard by shard, resumable). Fitting a teacher (``distill-jax train-teacher``) is a job
over the trainer: :mod:`distill_jax.jobs.train_teacher`."""
