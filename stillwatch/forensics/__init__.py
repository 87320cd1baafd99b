"""Forensics: watermark the teacher's outputs, prove a suspect was trained on them, and antidistillation sampling.

Modules: `watermark` (keyed green-list processor and detector), `radioactivity` (the de-duplicated binomial test
of Sander et al. 2024), `prove` (evidence, suspect, controls), `report` (JSON + Markdown/HTML) and `antidistill`
(Savani et al. 2025). Heavy imports stay inside the modules; import what you need from them.
"""
