"""The models: the student, the teachers, their annotation, pick rules and the benchmark's model wrappers."""
