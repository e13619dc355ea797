"""Event data: a seeded generator of GTC-like events, the exact next-click oracle, and file loading.

Three parts, used by notebook 00 and by everything that reads event data afterwards:

* **Generator.** :func:`generate_catalog` writes a catalog of talks (title, abstract, track, level,
  format, organisation, day, slot) whose text is composed from track- and subtopic-specific
  vocabulary, and gives every talk a unit latent vector ``z`` (track centre + subtopic centre +
  vectors of the key terms its text uses + noise, normalised) and a popularity. :func:`generate_sessions` draws attendee sessions from the latent click model
  described below. :func:`generate_events` builds the two events of the series ("spring", the
  training event, and "fall", a new event with a disjoint catalog) and :func:`write_event` writes
  ``catalog.parquet``, ``clicks.parquet`` and ``oracle.npz``.
* **Oracle.** :class:`Oracle` holds the generative parameters and returns the exact probability of
  every talk being the next click of a session prefix. It is the ceiling any recommender can
  reach on generated data.
* **Loading.** :func:`load_catalog` and :func:`load_clicks` read CSV or parquet files (generated
  or brought by a user) through the same validation; problems raise :class:`DataValidationError`
  naming the file, the row and the column.

Click model (the parameters live in :class:`ClickModel`)
-----------------------------------------------------------
First click of a session: the attendee has a sparse interest over tracks,
``theta ~ Dirichlet(interest_alpha)``; a track ``t`` is drawn from ``theta`` and then a talk of that
track with probability proportional to its popularity. Averaged over ``theta`` (what the oracle
returns for an empty prefix) this is ``P(j) = pop_j / (n_tracks * sum of pop over j's track)``.

Every later click depends on the prefix ``p`` (the talks clicked so far, last one ``l``) only::

    P(j | p)  ∝  exp( a * z_l . z_j
                      + b * log((count of j's track in p + s) / (len(p) + s * n_tracks))
                      + c * log pop_j
                      - d * |day_j - day_l| )        for j not in p (no repeats), 0 for j in p.

Session length is ``2 + Geometric`` (mean ``mean_length``, at most ``max_length`` clicks);
sessions start uniformly over a window of ``days`` days and clicks are 10-300 s apart.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

CATALOG_COLUMNS = ["talk_id", "title", "abstract", "track", "level", "format", "organization", "day", "slot"]
CATALOG_REQUIRED = ["talk_id", "title"]  # the other columns are optional: absent means empty
CATALOG_TEXT_COLUMNS = ["talk_id", "title", "abstract", "track", "level", "format", "organization", "slot"]
TALK_ID_ALIASES = ["id"]  # taken as the talk id when the file has no talk_id column
CLICK_COLUMNS = ["session_id", "talk_id", "timestamp"]
LEVELS = ["Beginner", "Intermediate", "Advanced"]
LEVEL_WEIGHTS = [0.3, 0.45, 0.25]
FORMATS = ["Talk", "Panel", "Lab", "Tutorial", "Poster"]
FORMAT_WEIGHTS = [0.6, 0.08, 0.1, 0.1, 0.12]
N_DAYS = 4
SLOTS = ["09:00", "10:00", "11:00", "13:00", "14:00", "15:00", "16:00", "17:00"]
MAX_PROBLEMS = 20
# Visible drivers of popularity (added to log popularity): format, level, the host organisation.
_FORMAT_POP = np.array([0.0, 0.2, -0.2, 0.1, -0.5])   # Talk, Panel, Lab, Tutorial, Poster
_LEVEL_POP = np.array([0.15, 0.0, -0.15])             # Beginner, Intermediate, Advanced
_FIRST_ORG_POP = 0.2                                  # ORGANIZATIONS[0]

# ---------------------------------------------------------------------------------------------
# Vocabulary. Per track: a weight (share of the catalog), track-wide nouns, verbs (base form),
# metrics, challenges, and 4-6 subtopics of (nouns; methods; application domains).
# ---------------------------------------------------------------------------------------------


def _split(text: str) -> list[str]:
    return [w.strip() for w in text.split(";") if w.strip()]


_VOCAB_SOURCE: dict[str, dict[str, Any]] = {
    "Generative AI & LLMs": {
        "weight": 0.15,
        "nouns": "large language models; transformer architectures; generative AI applications; prompt pipelines",
        "verbs": "fine-tune; serve; evaluate; align; compress",
        "metrics": "tokens per second; time to first token; answer accuracy; cost per query",
        "challenges": "serving costs climb with every new user; hallucinated answers erode trust; "
                      "context windows keep growing faster than memory",
        "subtopics": {
            "Pretraining at Scale": (
                "foundation models; pretraining corpora; tokenizers; mixture-of-experts layers; scaling laws; "
                "training checkpoints; data mixtures",
                "tensor parallelism; pipeline parallelism; FP8 training; sequence packing; curriculum data mixing",
                "multilingual assistants; code generation; scientific literature mining; sovereign AI models"),
            "Fine-Tuning & Alignment": (
                "instruction datasets; reward models; preference data; low-rank adapters; chat templates; "
                "synthetic instructions",
                "LoRA fine-tuning; direct preference optimization; RLHF; supervised fine-tuning; "
                "knowledge distillation",
                "customer support agents; domain-specific copilots; legal document review; financial research"),
            "Retrieval-Augmented Generation": (
                "vector databases; embedding models; rerankers; document chunks; knowledge bases; "
                "grounded citations; enterprise documents",
                "hybrid search; cross-encoder reranking; query rewriting; chunking strategies; "
                "grounded generation",
                "enterprise search; technical documentation; internal help desks; contract analysis"),
            "LLM Inference Optimization": (
                "KV caches; inference servers; quantized weights; batching schedulers; decoding kernels; "
                "attention kernels",
                "in-flight batching; INT4 quantization; speculative decoding; paged attention; kernel fusion",
                "chat services; real-time copilots; on-device assistants; high-traffic APIs"),
            "AI Agents & Tool Use": (
                "autonomous agents; tool calls; planning loops; function schemas; guardrails; "
                "multi-agent workflows",
                "ReAct prompting; function calling; task decomposition; self-reflection; agent memory",
                "IT operations automation; data analysis assistants; software engineering agents; "
                "procurement workflows"),
        },
    },
    "Computer Vision": {
        "weight": 0.09,
        "nouns": "vision models; image datasets; visual features; camera streams",
        "verbs": "detect; segment; track; annotate; recognise",
        "metrics": "mean average precision; frames per second; labeling cost; intersection over union",
        "challenges": "labeled images are scarce and expensive; cameras produce more video than anyone can "
                      "watch; models trained in the lab break under new lighting",
        "subtopics": {
            "Object Detection": (
                "bounding boxes; detection heads; anchor-free detectors; feature pyramids; small objects; "
                "occluded objects",
                "single-stage detectors; detection transformers; non-maximum suppression; mosaic augmentation; "
                "focal loss",
                "retail shelf monitoring; traffic cameras; factory inspection; warehouse safety"),
            "Image Segmentation": (
                "segmentation masks; pixel labels; instance masks; panoptic labels; boundary refinement",
                "promptable segmentation; U-Net decoders; mask transformers; weak supervision; "
                "interactive labeling",
                "satellite mapping; medical scans; agricultural fields; photo editing"),
            "Video Analytics": (
                "video streams; multi-camera tracking; action recognition; temporal features; re-identification",
                "optical flow; temporal transformers; multi-object tracking; stream batching; "
                "hardware video decoding",
                "smart cities; sports broadcasting; retail loss prevention; stadium operations"),
            "3D Vision & Reconstruction": (
                "point clouds; depth maps; neural radiance fields; Gaussian splats; multi-view geometry; "
                "camera poses",
                "Gaussian splatting; structure from motion; monocular depth estimation; volumetric rendering; "
                "bundle adjustment",
                "digital heritage; construction progress tracking; real estate tours; e-commerce 3D assets"),
            "Vision-Language Models": (
                "image captions; visual question answering; multimodal embeddings; image-text pairs; "
                "open-vocabulary detectors",
                "contrastive pretraining; visual instruction tuning; zero-shot classification; "
                "multimodal retrieval; image tokenizers",
                "visual search; accessibility tools; content moderation; document understanding"),
        },
    },
    "Robotics": {
        "weight": 0.08,
        "nouns": "robots; robot policies; embodied AI; robot fleets",
        "verbs": "train; simulate; deploy; control; teach",
        "metrics": "task success rate; cycle time; sim-to-real gap; mean time between failures",
        "challenges": "real-world robot data is slow and costly to collect; policies that work in simulation "
                      "fail on the factory floor; every new task still needs weeks of programming",
        "subtopics": {
            "Robot Learning": (
                "robot demonstrations; reward functions; policy networks; teleoperation data; "
                "robot foundation models",
                "imitation learning; reinforcement learning; diffusion policies; domain randomization; "
                "behavior cloning",
                "pick-and-place cells; household robots; laboratory automation; kitting stations"),
            "Manipulation & Grasping": (
                "robotic arms; grasp poses; dexterous hands; contact forces; deformable objects; end effectors",
                "grasp synthesis; tactile sensing; motion planning; impedance control; 6-DoF pose estimation",
                "bin picking; electronics assembly; food handling; parcel sorting"),
            "Humanoids & Locomotion": (
                "humanoid robots; legged robots; whole-body controllers; balance controllers; gait patterns",
                "model predictive control; motion retargeting; whole-body control; sim-to-real transfer; "
                "terrain curricula",
                "last-mile delivery; inspection of industrial plants; elder care; construction sites"),
            "Robot Simulation & Synthetic Data": (
                "physics simulators; synthetic images; simulated sensors; robot digital twins; "
                "scene randomization",
                "GPU-accelerated physics; photorealistic rendering; procedural scene generation; "
                "parallel environments; synthetic data generation",
                "warehouse automation; robot arm validation; mobile robot testing; factory commissioning"),
            "Robot Perception & SLAM": (
                "occupancy maps; visual odometry; robot localization; semantic maps; stereo cameras",
                "visual SLAM; loop closure; voxel-based mapping; sensor calibration; semantic mapping",
                "autonomous mobile robots; agricultural robots; hospital delivery robots; drone navigation"),
        },
    },
    "Data Science": {
        "weight": 0.1,
        "nouns": "data pipelines; analytics workloads; feature tables; notebooks",
        "verbs": "accelerate; analyze; clean; forecast; explore",
        "metrics": "end-to-end runtime; model accuracy; cost per job; time to insight",
        "challenges": "data preparation still eats most of the project time; CPU clusters struggle with "
                      "billion-row tables; models go stale as data drifts",
        "subtopics": {
            "GPU DataFrames & ETL": (
                "dataframes; joins; group-by aggregations; parquet files; string columns; ETL jobs",
                "columnar processing; out-of-core execution; zero-code-change acceleration; lazy evaluation; "
                "predicate pushdown",
                "clickstream analytics; financial reporting; log processing; retail sales analysis"),
            "Gradient Boosting & Tabular ML": (
                "gradient-boosted trees; tabular datasets; categorical features; feature importance; "
                "hyperparameter sweeps",
                "XGBoost training; SHAP explanations; target encoding; Bayesian optimization; "
                "early stopping",
                "credit scoring; churn prediction; insurance pricing; marketing attribution"),
            "Graph Analytics": (
                "graph neural networks; knowledge graphs; property graphs; node embeddings; "
                "community structures",
                "PageRank; Louvain clustering; message passing; neighbor sampling; link prediction",
                "anti-money laundering; supply chain risk; social network analysis; drug repurposing"),
            "Time Series Forecasting": (
                "time series; demand signals; seasonality patterns; forecast horizons; sensor readings",
                "temporal fusion transformers; ARIMA baselines; hierarchical forecasting; "
                "probabilistic forecasting; backtesting",
                "retail demand planning; energy load forecasting; inventory optimization; capacity planning"),
            "Spark & Distributed Analytics": (
                "Spark clusters; distributed queries; shuffle stages; data lakes; SQL workloads",
                "GPU-accelerated Spark; adaptive query execution; columnar shuffle; distributed Dask; "
                "query profiling",
                "ad-tech reporting; telecom analytics; data lake migration; nightly batch jobs"),
        },
    },
    "HPC & Scientific Computing": {
        "weight": 0.09,
        "nouns": "supercomputers; scientific codes; simulation workloads; HPC applications",
        "verbs": "parallelize; profile; optimize; port; simulate",
        "metrics": "time to solution; strong scaling efficiency; floating-point throughput; energy per simulation",
        "challenges": "legacy scientific codes were never written for accelerators; communication dominates at "
                      "scale; energy limits what a machine can run",
        "subtopics": {
            "CUDA Programming": (
                "CUDA kernels; warps; shared memory; memory coalescing; occupancy; thread blocks",
                "kernel profiling; warp-level primitives; asynchronous copies; CUDA graphs; tensor core "
                "programming",
                "custom operators; image processing kernels; sparse computations; physics solvers"),
            "Multi-GPU Communication": (
                "collective operations; all-reduce; NVLink topologies; MPI ranks; communication overlap",
                "NCCL collectives; GPU-direct RDMA; NVSHMEM; topology-aware placement; overlapping compute "
                "and communication",
                "distributed training; climate solvers; lattice QCD; multi-node inference"),
            "Quantum Computing": (
                "qubits; quantum circuits; state vectors; quantum error correction; hybrid quantum-classical "
                "workflows",
                "state-vector simulation; tensor network contraction; variational quantum eigensolvers; "
                "circuit cutting; quantum kernel methods",
                "quantum chemistry; portfolio optimization; quantum algorithm research; materials discovery"),
            "Computational Fluid Dynamics": (
                "flow fields; turbulence models; meshes; Navier-Stokes solvers; boundary conditions",
                "lattice Boltzmann methods; large eddy simulation; physics-informed neural networks; "
                "adaptive mesh refinement; surrogate models",
                "aircraft design; automotive aerodynamics; wind farm layout; combustion engines"),
            "Numerical Libraries": (
                "dense linear algebra; sparse solvers; FFTs; eigenvalue problems; mixed-precision arithmetic",
                "iterative refinement; batched GEMM; preconditioned conjugate gradients; "
                "randomized linear algebra; autotuning",
                "seismic imaging; structural analysis; electronic structure codes; signal processing"),
        },
    },
    "Autonomous Vehicles": {
        "weight": 0.08,
        "nouns": "self-driving stacks; autonomous vehicles; driving data; vehicle fleets",
        "verbs": "validate; perceive; plan; drive; certify",
        "metrics": "disengagement rate; miles per intervention; perception recall; planning latency",
        "challenges": "rare edge cases dominate safety; collecting real driving miles is slow; "
                      "safety cases demand evidence regulators accept",
        "subtopics": {
            "Sensor Fusion & Perception": (
                "lidar point clouds; radar returns; surround cameras; bird's-eye-view features; "
                "3D object tracks",
                "BEV transformers; multi-sensor fusion; occupancy prediction; temporal tracking; "
                "auto-labeling",
                "highway driving; urban robotaxis; trucking; parking assistance"),
            "Planning & Prediction": (
                "trajectory proposals; motion forecasts; driving policies; cost maps; interactive agents",
                "end-to-end driving models; motion prediction transformers; model predictive planning; "
                "imitation from fleet data; world models",
                "unprotected left turns; merging on highways; pedestrian-rich intersections; "
                "delivery vehicles"),
            "AV Simulation & Validation": (
                "driving scenarios; sensor simulation; closed-loop tests; scenario libraries; "
                "safety metrics",
                "neural scene reconstruction; scenario generation; hardware-in-the-loop testing; "
                "log replay; coverage analysis",
                "safety certification; regression testing; new-city launches; insurance assessment"),
            "In-Vehicle Computing": (
                "automotive SoCs; functional safety; real-time operating systems; vehicle networks; "
                "over-the-air updates",
                "ISO 26262 processes; safety-critical scheduling; model quantization for cars; "
                "software-defined vehicle architectures; redundant compute",
                "driver monitoring; in-cabin assistants; premium passenger cars; commercial fleets"),
            "HD Maps & Localization": (
                "high-definition maps; lane graphs; map updates; GNSS signals; localization priors",
                "crowd-sourced mapping; map-free driving; particle filters; lane detection; "
                "map change detection",
                "road network maintenance; city-scale mapping; mining haulage; airport ground vehicles"),
        },
    },
    "Healthcare & Life Sciences": {
        "weight": 0.09,
        "nouns": "clinical data; biomedical models; patient outcomes; life science workflows",
        "verbs": "diagnose; screen; sequence; discover; triage",
        "metrics": "diagnostic sensitivity; time to result; hit rate; cost per genome",
        "challenges": "patient data is siloed and sensitive; wet-lab experiments are slow and expensive; "
                      "clinicians have little time for new tools",
        "subtopics": {
            "Medical Imaging": (
                "CT scans; MRI volumes; radiology reports; X-ray images; ultrasound clips; 3D organ masks",
                "federated learning; volumetric segmentation; self-supervised pretraining; "
                "image reconstruction; uncertainty estimation",
                "cancer screening; stroke triage; cardiology; radiology workflows"),
            "Drug Discovery": (
                "protein structures; small molecules; binding affinities; molecular docking; "
                "chemical libraries",
                "protein structure prediction; generative chemistry; virtual screening; free energy "
                "perturbation; molecular dynamics",
                "oncology pipelines; antibody design; rare disease programs; biotech startups"),
            "Genomics": (
                "sequencing reads; genetic variants; single-cell data; genome assemblies; gene expression",
                "accelerated variant calling; sequence alignment; single-cell clustering; "
                "DNA language models; long-read basecalling",
                "population genomics; newborn screening; cancer genomics; agricultural genetics"),
            "Clinical AI": (
                "electronic health records; clinical notes; patient timelines; hospital workflows; "
                "clinical trials",
                "clinical language models; risk stratification; de-identification; ambient documentation; "
                "trial matching",
                "emergency departments; intensive care units; hospital operations; telehealth"),
            "Digital Pathology": (
                "whole-slide images; tissue samples; cell nuclei; biomarkers; stained slides",
                "multiple instance learning; tile-level classifiers; stain normalization; "
                "pathology foundation models; slide-level aggregation",
                "tumor grading; biomarker discovery; pathology labs; companion diagnostics"),
        },
    },
    "Graphics & Simulation": {
        "weight": 0.08,
        "nouns": "rendering pipelines; 3D content; virtual worlds; interactive graphics",
        "verbs": "render; animate; light; simulate; author",
        "metrics": "frame time; image quality; artist iteration time; memory footprint",
        "challenges": "photoreal scenes overwhelm real-time budgets; 3D content is slow to create; "
                      "tools and file formats do not talk to each other",
        "subtopics": {
            "Real-Time Ray Tracing": (
                "path tracing; denoisers; bounding volume hierarchies; global illumination; shaders",
                "ReSTIR sampling; neural denoising; shader execution reordering; importance sampling; "
                "opacity micromaps",
                "AAA games; architectural visualization; product configurators; film previsualization"),
            "Neural Graphics": (
                "neural rendering; super-resolution upscaling; neural textures; generated frames; "
                "neural materials",
                "frame generation; neural texture compression; learned upscaling; neural radiance caching; "
                "inverse rendering",
                "PC gaming; cloud gaming; mobile graphics; virtual reality"),
            "Digital Twins & OpenUSD": (
                "USD scenes; factory digital twins; CAD assemblies; asset pipelines; live layers",
                "OpenUSD composition; physically based simulation; live collaboration; CAD conversion; "
                "scene optimization",
                "factory planning; retail store layout; telecom network planning; urban planning"),
            "Game Development": (
                "game engines; character animation; level design; game physics; procedural worlds",
                "animation retargeting; procedural content generation; generative NPC dialogue; "
                "physics-based animation; asset streaming",
                "open-world games; esports titles; indie studios; live-service games"),
            "Virtual Production & Media": (
                "LED volumes; visual effects; video pipelines; color grading; broadcast graphics",
                "in-camera visual effects; AI video editing; real-time compositing; volumetric capture; "
                "generative video",
                "film production; live broadcast; advertising studios; streaming platforms"),
        },
    },
    "Recommender Systems": {
        "weight": 0.07,
        "nouns": "recommendation models; user interactions; item catalogs; personalization systems",
        "verbs": "rank; retrieve; personalize; recommend; embed",
        "metrics": "click-through rate; recall at k; revenue per session; serving latency",
        "challenges": "embedding tables outgrow GPU memory; user interests shift within a single session; "
                      "new items arrive with no interaction history",
        "subtopics": {
            "Session-Based Recommendation": (
                "session histories; next-item predictions; anonymous users; interaction sequences; "
                "short-term intent",
                "transformer sequence models; next-item prediction; masked item modeling; "
                "sequence augmentation; item cold-start embeddings",
                "news feeds; e-commerce browsing; music streaming; event agendas"),
            "Embeddings & Retrieval": (
                "two-tower models; item embeddings; candidate sets; nearest neighbor indexes; "
                "embedding tables",
                "approximate nearest neighbor search; contrastive retrieval training; hard negative mining; "
                "embedding quantization; hierarchical embedding caches",
                "video platforms; marketplace search; job matching; dating apps"),
            "Ranking Models": (
                "click-through rate models; feature crosses; multi-task rankers; calibration layers; "
                "ranking features",
                "deep learning recommendation models; deep and cross networks; multi-objective ranking; "
                "model calibration; knowledge distillation for rankers",
                "online advertising; app stores; food delivery; travel booking"),
            "Recommender Pipelines in Production": (
                "feature stores; inference pipelines; model ensembles; A/B tests; online features",
                "real-time feature serving; ensemble serving; online experimentation; continuous training; "
                "multi-stage pipelines",
                "retail personalization; streaming services; social media feeds; banking offers"),
        },
    },
    "Networking & Data Center": {
        "weight": 0.07,
        "nouns": "data centers; AI factories; network fabrics; infrastructure stacks",
        "verbs": "connect; orchestrate; secure; offload; provision",
        "metrics": "bandwidth utilization; tail latency; power usage effectiveness; GPU utilization",
        "challenges": "AI clusters stall when the network cannot keep up; power and cooling set hard limits; "
                      "operators juggle too many tools",
        "subtopics": {
            "DPUs & SmartNICs": (
                "data processing units; SmartNICs; infrastructure offloads; packet processing; "
                "virtual switches",
                "DOCA programming; hardware offload; zero-trust isolation; inline encryption; "
                "programmable pipelines",
                "cloud providers; telecom edge sites; storage appliances; multi-tenant clusters"),
            "AI Networking Fabrics": (
                "InfiniBand fabrics; RoCE Ethernet; congestion control; adaptive routing; network topologies",
                "adaptive routing; in-network computing; congestion management; rail-optimized topologies; "
                "telemetry-driven tuning",
                "large training clusters; AI cloud services; supercomputing centers; enterprise AI pods"),
            "Storage & Data Movement": (
                "parallel file systems; object stores; NVMe drives; checkpoint files; data loaders",
                "GPUDirect Storage; asynchronous checkpointing; tiered caching; data compression; "
                "I/O profiling",
                "training data lakes; media archives; genomics storage; checkpoint-heavy training"),
            "Cluster Orchestration": (
                "Kubernetes clusters; job schedulers; GPU partitions; containers; resource quotas",
                "Slurm scheduling; multi-instance GPU partitioning; gang scheduling; autoscaling; "
                "fault-tolerant training",
                "research computing centers; MLOps platforms; inference fleets; shared GPU clouds"),
            "Data Center Efficiency": (
                "liquid cooling; power delivery; rack density; energy telemetry; heat reuse",
                "power capping; workload-aware cooling; energy-aware scheduling; thermal modeling; "
                "carbon accounting",
                "colocation providers; sustainable data centers; edge micro data centers; utility partnerships"),
        },
    },
    "Climate & Energy": {
        "weight": 0.05,
        "nouns": "climate data; earth system models; energy systems; environmental sensors",
        "verbs": "forecast; downscale; monitor; model; decarbonize",
        "metrics": "forecast skill; spatial resolution; prediction lead time; emissions avoided",
        "challenges": "kilometer-scale simulations are too expensive to run often; observations are sparse "
                      "in the places that matter; grids must absorb volatile renewables",
        "subtopics": {
            "AI Weather Forecasting": (
                "global forecast models; reanalysis data; atmospheric states; ensemble forecasts; "
                "extreme weather events",
                "graph neural weather models; spherical neural operators; ensemble generation; "
                "diffusion-based downscaling; data assimilation",
                "severe storm warnings; aviation weather; agriculture planning; flood early warning"),
            "Climate Modeling": (
                "earth system simulations; kilometer-scale climate models; ocean circulation; "
                "climate projections; aerosols",
                "generative downscaling; climate emulators; coupled model acceleration; bias correction; "
                "uncertainty quantification",
                "climate risk assessment; insurance catastrophe models; public policy; coastal adaptation"),
            "Energy & Smart Grids": (
                "power grids; renewable generation; battery storage; grid sensors; load profiles",
                "grid state estimation; reinforcement learning for dispatch; physics-ML surrogates; "
                "fault localization; predictive maintenance",
                "utility operations; wind and solar farms; electric vehicle charging; microgrids"),
            "Earth Observation": (
                "satellite imagery; multispectral bands; land cover maps; synthetic aperture radar; "
                "change maps",
                "geospatial foundation models; cloud removal; change detection; super-resolution of "
                "satellite images; time-series segmentation",
                "deforestation monitoring; crop yield estimation; wildfire mapping; methane detection"),
        },
    },
    "Cybersecurity": {
        "weight": 0.06,
        "nouns": "security operations; threat intelligence; security telemetry; attack surfaces",
        "verbs": "detect; defend; investigate; harden; protect",
        "metrics": "mean time to detect; false positive rate; alert volume; analyst hours saved",
        "challenges": "analysts drown in alerts; attackers automate faster than defenders; sensitive data must "
                      "stay protected while it is processed",
        "subtopics": {
            "Threat Detection": (
                "network flows; endpoint logs; anomaly scores; attack patterns; security alerts",
                "graph-based anomaly detection; log parsing with language models; behavioral baselines; "
                "streaming inference; alert triage",
                "security operations centers; managed detection services; critical infrastructure; "
                "financial networks"),
            "Fraud Prevention": (
                "payment transactions; account takeovers; fraud rings; identity signals; chargebacks",
                "graph neural fraud detection; real-time transaction scoring; device fingerprinting; "
                "sequence models of user behavior; semi-supervised labeling",
                "card payments; online banking; insurance claims; e-commerce checkouts"),
            "Confidential Computing": (
                "trusted execution environments; encrypted memory; attestation reports; secure enclaves; "
                "sensitive datasets",
                "confidential GPU computing; remote attestation; secure multi-party computation; "
                "homomorphic encryption; federated analytics",
                "regulated industries; cross-hospital collaboration; sovereign clouds; model licensing"),
            "Securing AI Systems": (
                "prompt injections; adversarial examples; model supply chains; jailbreaks; training data "
                "poisoning",
                "red teaming; input filtering; model signing; adversarial training; output moderation",
                "public chatbots; open model hubs; enterprise copilots; autonomous agents"),
        },
    },
}


def _build_vocab() -> dict[str, dict[str, Any]]:
    vocab = {}
    for track, spec in _VOCAB_SOURCE.items():
        subs = {}
        for name, (nouns, methods, apps) in spec["subtopics"].items():
            subs[name] = {"nouns": _split(nouns), "methods": _split(methods), "apps": _split(apps)}
        vocab[track] = {
            "weight": spec["weight"], "nouns": _split(spec["nouns"]), "verbs": _split(spec["verbs"]),
            "metrics": _split(spec["metrics"]), "challenges": _split(spec["challenges"]), "subtopics": subs,
        }
    return vocab


VOCAB = _build_vocab()
TRACKS = list(VOCAB)
SUBTOPICS = [(t, s) for t in TRACKS for s in VOCAB[t]["subtopics"]]  # global subtopic code = position

ORGANIZATIONS = [
    "NVIDIA", "Northbridge University", "Helix Robotics", "Aster Health", "Cobalt Analytics", "Lumen Motors",
    "Meridian Bank", "Polar Climate Lab", "Quanta Games", "Sable Security", "Tidewater Energy",
    "Orchid Biosciences", "Vantage Retail", "Kestrel Aerospace", "Pinecrest Institute of Technology",
    "Ironwood Cloud", "Silverline Telecom", "Beacon Hospital Network", "Granite Logistics", "Nimbus AI",
    "Redwood National Laboratory", "Solace Media", "Atlas Insurance", "Evergreen Agritech", "Harbor Studios",
    "Zenith Semiconductors", "Cascade Pharma", "Brightpath Education", "Stratus Data", "Falcon Automotive",
]
ORG_WEIGHTS = np.array([6.0] + [1.0] * (len(ORGANIZATIONS) - 1))
# Organisations that mostly speak in one track (the others, and these 40% of the time, speak anywhere).
ORG_HOME_TRACK = {
    "Helix Robotics": "Robotics", "Granite Logistics": "Robotics", "Aster Health": "Healthcare & Life Sciences",
    "Orchid Biosciences": "Healthcare & Life Sciences", "Beacon Hospital Network": "Healthcare & Life Sciences",
    "Cascade Pharma": "Healthcare & Life Sciences", "Cobalt Analytics": "Data Science",
    "Atlas Insurance": "Data Science", "Stratus Data": "Data Science", "Lumen Motors": "Autonomous Vehicles",
    "Falcon Automotive": "Autonomous Vehicles", "Meridian Bank": "Cybersecurity", "Sable Security": "Cybersecurity",
    "Polar Climate Lab": "Climate & Energy", "Tidewater Energy": "Climate & Energy",
    "Evergreen Agritech": "Climate & Energy", "Quanta Games": "Graphics & Simulation",
    "Solace Media": "Graphics & Simulation", "Harbor Studios": "Graphics & Simulation",
    "Vantage Retail": "Recommender Systems", "Kestrel Aerospace": "HPC & Scientific Computing",
    "Redwood National Laboratory": "HPC & Scientific Computing", "Zenith Semiconductors": "HPC & Scientific Computing",
    "Ironwood Cloud": "Networking & Data Center", "Silverline Telecom": "Networking & Data Center",
    "Nimbus AI": "Generative AI & LLMs",
}

_SETTINGS = ["on a single GPU", "across multi-node GPU clusters", "on edge devices", "in the cloud",
             "on workstation GPUs", "at data-center scale", "on embedded platforms", "with mixed precision",
             "in hybrid cloud environments", "on a budget"]
_ADJECTIVES = ["Efficient", "Robust", "Real-Time", "Scalable", "Trustworthy", "Practical", "Open",
               "Next-Generation", "Energy-Efficient", "Production-Grade", "Accelerated", "Interactive"]
_GENERIC_CHALLENGES = ["costs grow faster than budgets", "latency budgets keep shrinking",
                       "data volumes outpace existing pipelines", "results are hard to reproduce across teams",
                       "the tooling remains fragmented", "moving from prototype to production takes months",
                       "accuracy gains often come at the expense of speed"]
_SPEAKERS = ["engineers", "researchers", "practitioners", "architects", "data scientists", "product leads"]
_FILLER = [
    "We close with open questions and a roadmap for the coming year.",
    "Code samples and notebooks will be shared after the session.",
    "We also discuss what did not work and why.",
    "Expect candid lessons from real deployments.",
    "The session ends with a live Q&A.",
    "We share benchmarks, pitfalls, and practical recommendations.",
    "Everything shown is built on openly available software.",
    "A short demo makes the ideas concrete.",
]

_TITLE_CORES = [
    "{M} for {N}",
    "Scaling {N} with {M}",
    "{N} in Production: Lessons from {A}",
    "Accelerating {A} with {M}",
    "Beyond {N}: {M} for {A}",
    "How {O} Uses {M} for {A}",
    "From {N} to {N2}: {ADJ} {S}",
    "{A} at Scale: {N} and {M}",
    "Faster {N}: {M} {SET}",
    "What's New in {S}: {N} and {M}",
    "Rethinking {N} for {A}",
    "Building {ADJ} {N2} with {M}",
    "{ADJ} {N}: When {M} Meets {A}",
    "End-to-End {S} for {A}",
    "Lessons Learned Deploying {M} in {A}",
    "{N}, {N2}, and {M}: A Practical View",
    "Can {M} Fix {N}?",
    "Inside the {O} Platform for {N}",
]
_TITLE_WRAPS = {
    "Talk": ["{core}"],
    "Panel": ["Panel: The Future of {S}", "Panel: {N} in {A}", "Panel Discussion: {core}",
              "Ask the Experts: {S} and {M}"],
    "Lab": ["Hands-On Lab: {core}", "Build {N2} with {M} (Lab)", "Lab: {VERBCAP} {N} with {M}"],
    "Tutorial": ["Tutorial: {core}", "Getting Started with {M}", "A Step-by-Step Guide to {N}",
                 "Tutorial: {VERBCAP} {N} {SET}"],
    "Poster": ["Poster: {core}", "{core} (Poster)"],
}
_OPENINGS = [
    "Teams working on {A} increasingly depend on {N}, yet {CH}.",
    "As {N} grow in size and importance, {CH}.",
    "{N} have become central to {A}, but {CH}.",
    "Getting {N} right is one of the hardest parts of {A}.",
    "In {A}, {CH}.",
    "Why do {N} still hold back {A}?",
    "{S} is changing quickly: {N} and {N2} now sit at the heart of {A}.",
]
_METHODS = [
    "In this {FN}, we show how {M} and {M2} {VERB} {N2} {SET}.",
    "We present a pipeline that combines {M} with {N2} to {VERB} workloads in {A}.",
    "Our approach uses {M} to {VERB} {N}, cutting the work needed for {A}.",
    "{SPK} from {O} walk through {M}, from {N} to {N2}.",
    "We describe how {O} adopted {M} for {N} and what changed along the way.",
    "The core idea is simple: {M} turns {N} into something teams can {VERB} {SET}.",
]
_RESULTS = [
    "On real workloads in {A} we measured {X}x better {MET} than our previous system.",
    "The result is {ADJL_A} system for {A} with {PCT}% better {MET}.",
    "Benchmarks show {M} improves {MET} by {X}x while keeping {N} manageable.",
    "We report {MET} before and after the change, along with the costs.",
]
_AUDIENCE = {
    "Beginner": ["No prior experience with {S} is required.",
                 "Ideal for newcomers who want a clear map of {S}.",
                 "We start from the basics of {N} and build up."],
    "Intermediate": ["Attendees should be comfortable with {N}.",
                     "Some familiarity with {M} will help.",
                     "Aimed at practitioners who already run {N} and want more from them."],
    "Advanced": ["We assume deep familiarity with {M} and dive into implementation details.",
                 "Expect a close look at internals, profiles, and trade-offs of {M2}.",
                 "For experts who want to push {N} to their limits."],
}
_FORMAT_SENTENCES = {
    "Talk": ["{FILLER}"],
    "Panel": ["Panelists from {O} and {O2} debate where {S} is heading.",
              "Leaders from {O}, {O2}, and academia share their views on {N}."],
    "Lab": ["Bring a laptop: you will {VERB} {N} step by step in a hosted GPU environment.",
            "Participants work through guided exercises on {M} and leave with working code."],
    "Tutorial": ["The tutorial walks through {M} with runnable examples.",
                 "Follow along as we {VERB} {N} from scratch."],
    "Poster": ["The poster summarises results on {A} and invites discussion.",
               "Stop by to discuss {M} and our results on {N2}."],
}
_FORMAT_NOUN = {"Talk": "talk", "Panel": "panel", "Lab": "lab", "Tutorial": "tutorial", "Poster": "poster"}
_SMALL_WORDS = {"a", "an", "the", "of", "for", "with", "and", "in", "on", "at", "to", "from", "by", "vs",
                "or", "into"}


def _titlecase(text: str) -> str:
    out = []
    for i, word in enumerate(text.split(" ")):
        if (i == 0 or word not in _SMALL_WORDS) and word[:1].islower() and word.islower():
            word = "-".join(p[:1].upper() + p[1:] for p in word.split("-"))
        out.append(word)
    return " ".join(out)


def _with_article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------------------------
# Latent structure, click model and the catalog generator
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClickModel:
    """Parameters of the next-click model (see the module docstring)."""

    a: float = 12.0                 # weight of the latent similarity z_l . z_j (unit vectors) to the last click
    b: float = 0.5                  # weight of log smoothed track share of the prefix
    c: float = 1.0                  # weight of log popularity
    d: float = 0.3                  # penalty per day between j and the last click
    share_smoothing: float = 0.5    # s in (count + s) / (len + s * n_tracks)
    interest_alpha: float = 0.2     # Dirichlet concentration of the first-click track interest
    mean_length: float = 6.5        # mean clicks per session (2 + geometric)
    max_length: int = 30
    min_gap_s: int = 10
    max_gap_s: int = 300

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class WorldParams:
    """Geometry of the latent space shared by every event generated from one world seed."""

    dim: int = 24
    track_scale: float = 0.75      # norm of a track centre
    subtopic_scale: float = 0.8    # norm of a subtopic centre
    term_scale: float = 0.9        # norm of the combined vector of the key terms a talk's text uses
    noise_scale: float = 0.45      # norm of a talk's own noise (before z is scaled to unit length)
    popularity_sigma: float = 0.6  # standard deviation of the talk-specific part of log popularity


@dataclasses.dataclass
class Latent:
    """Latent arrays of one catalog, in catalog order."""

    event: str
    z: np.ndarray            # (n_talks, dim) float64, unit rows
    log_pop: np.ndarray      # (n_talks,) float64, mean 0
    track: np.ndarray        # (n_talks,) int64, index into TRACKS
    subtopic: np.ndarray     # (n_talks,) int64, index into SUBTOPICS
    day: np.ndarray          # (n_talks,) int64, 1..N_DAYS

    @property
    def popularity(self) -> np.ndarray:
        return np.exp(self.log_pop)


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _all_terms() -> list[str]:
    terms: dict[str, None] = {}
    for track in TRACKS:
        for noun in VOCAB[track]["nouns"]:
            terms[noun] = None
        for sub in VOCAB[track]["subtopics"].values():
            for key in ("nouns", "methods", "apps"):
                for term in sub[key]:
                    terms[term] = None
    return list(terms)


TERMS = _all_terms()
TERM_INDEX = {t: i for i, t in enumerate(TERMS)}


def world_centres(world_seed: int, world: WorldParams = WorldParams()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-free geometry of a world seed: track centres (n_tracks, dim), subtopic centres
    (n_subtopics, dim) and term vectors (n_terms, dim), scaled by ``world``."""
    rng = np.random.default_rng([int(world_seed), 7919])
    track_c = world.track_scale * _unit_rows(rng, len(TRACKS), world.dim)
    sub_c = world.subtopic_scale * _unit_rows(rng, len(SUBTOPICS), world.dim)
    term_v = _unit_rows(rng, len(TERMS), world.dim)
    return track_c, sub_c, term_v


def _pick(rng: np.random.Generator, items: Sequence[str], k: int = 1) -> list[str]:
    idx = rng.choice(len(items), size=min(k, len(items)), replace=False)
    return [items[i] for i in idx]


def _talk_text(rng: np.random.Generator, track: str, sub: str, fmt: str, level: str,
               org: str) -> tuple[str, str, list[str]]:
    """Title, abstract and the key terms (nouns, methods, application) that the text really uses."""
    tv, sv = VOCAB[track], VOCAB[track]["subtopics"][sub]
    nouns = sv["nouns"] + (tv["nouns"] if rng.random() < 0.35 else [])
    n1, n2 = _pick(rng, nouns, 2)
    m1, m2 = _pick(rng, sv["methods"], 2)
    app = _pick(rng, sv["apps"])[0]
    if rng.random() < 0.1:  # an application borrowed from another track (e.g. LLMs for healthcare)
        other = TRACKS[int(rng.integers(len(TRACKS)))]
        other_sub = _pick(rng, list(VOCAB[other]["subtopics"]))[0]
        app = _pick(rng, VOCAB[other]["subtopics"][other_sub]["apps"])[0]
    orgs = _pick(rng, [o for o in ORGANIZATIONS if o != org], 1)
    verb = _pick(rng, tv["verbs"])[0]
    fields = {
        "N": n1, "N2": n2, "M": m1, "M2": m2, "A": app, "S": sub, "O": org, "O2": orgs[0],
        "ADJ": _pick(rng, _ADJECTIVES)[0], "ADJL_A": _with_article(_pick(rng, _ADJECTIVES)[0].lower()),
        "SET": _pick(rng, _SETTINGS)[0], "VERB": verb, "VERBCAP": verb[:1].upper() + verb[1:],
        "MET": _pick(rng, tv["metrics"])[0], "FN": _FORMAT_NOUN[fmt],
        "CH": _pick(rng, tv["challenges"] + _GENERIC_CHALLENGES[:3])[0],
        "SPK": _sentence(_pick(rng, _SPEAKERS)[0]), "X": f"{rng.uniform(1.3, 12):.1f}".rstrip("0").rstrip("."),
        "PCT": str(int(rng.integers(8, 70))), "FILLER": _pick(rng, _FILLER)[0],
    }
    core = _pick(rng, _TITLE_CORES)[0].format(**fields)
    wrap = _pick(rng, _TITLE_WRAPS[fmt])[0]
    if fmt == "Talk" or rng.random() < 0.6:
        title = wrap.format(core=core, **fields)
    else:
        title = core
    title = _titlecase(title)

    sentences = [_sentence(_pick(rng, _OPENINGS)[0].format(**fields)),
                 _sentence(_pick(rng, _METHODS)[0].format(**fields))]
    optional = [_pick(rng, _RESULTS)[0], _pick(rng, _AUDIENCE[level])[0], _pick(rng, _FORMAT_SENTENCES[fmt])[0]]
    n_extra = int(rng.integers(0, 3))  # 2-4 sentences in all
    for i in sorted(rng.choice(len(optional), size=n_extra, replace=False)):
        sentences.append(_sentence(optional[i].format(**fields)))
    abstract = " ".join(sentences)
    text = f"{title} {abstract}".lower()
    terms = [t for t in dict.fromkeys([n1, n2, m1, m2, app]) if t.lower() in text]
    return title, abstract, terms


def generate_catalog(n_talks: int, seed: int, event: str = "spring", id_prefix: str = "S",
                     id_start: int = 50001, world_seed: int = 0,
                     world: WorldParams = WorldParams()) -> tuple[pd.DataFrame, Latent]:
    """A catalog of ``n_talks`` GTC-like talks and their latent arrays (in catalog order).

    Talk ids are ``f"{id_prefix}{id_start + i}"``. The track/subtopic centres come from
    ``world_seed`` (shared by the events of one series); talks, text and noise from ``seed``.
    """
    if n_talks < 1:
        raise ValueError("n_talks must be >= 1")
    rng = np.random.default_rng([int(seed), 104729])
    track_c, sub_c, term_v = world_centres(world_seed, world)
    weights = np.array([VOCAB[t]["weight"] for t in TRACKS])
    track = rng.choice(len(TRACKS), size=n_talks, p=weights / weights.sum())
    sub_of_track = {ti: [si for si, (t, _) in enumerate(SUBTOPICS) if t == TRACKS[ti]] for ti in range(len(TRACKS))}
    subtopic = np.array([sub_of_track[t][int(rng.integers(len(sub_of_track[t])))] for t in track], dtype=np.int64)
    level = rng.choice(len(LEVELS), size=n_talks, p=LEVEL_WEIGHTS)
    fmt = rng.choice(len(FORMATS), size=n_talks, p=FORMAT_WEIGHTS)
    org = rng.choice(len(ORGANIZATIONS), size=n_talks, p=ORG_WEIGHTS / ORG_WEIGHTS.sum())
    at_home = rng.random(n_talks) < 0.6
    home_pick = rng.random(n_talks)
    for ti, name in enumerate(TRACKS):
        homes = [k for k, o in enumerate(ORGANIZATIONS) if ORG_HOME_TRACK.get(o) == name]
        who = np.flatnonzero((track == ti) & at_home)
        if homes and len(who):
            org[who] = np.array(homes)[(home_pick[who] * len(homes)).astype(int)]
    day = rng.integers(1, N_DAYS + 1, size=n_talks)
    slot = rng.integers(0, len(SLOTS), size=n_talks)
    titles, abstracts = [], []
    term_part = np.zeros((n_talks, world.dim))
    for i in range(n_talks):
        title, abstract, terms = _talk_text(rng, TRACKS[track[i]], SUBTOPICS[subtopic[i]][1], FORMATS[fmt[i]],
                                            LEVELS[level[i]], ORGANIZATIONS[org[i]])
        titles.append(title)
        abstracts.append(abstract)
        if terms:
            term_part[i] = term_v[[TERM_INDEX[t] for t in terms]].sum(axis=0) / math.sqrt(len(terms))
    noise = world.noise_scale * rng.standard_normal((n_talks, world.dim)) / math.sqrt(world.dim)
    z = track_c[track] + sub_c[subtopic] + world.term_scale * term_part + noise
    z /= np.linalg.norm(z, axis=1, keepdims=True)  # unit length: no talk is a hub by its norm alone
    log_pop = (world.popularity_sigma * rng.standard_normal(n_talks) + _FORMAT_POP[fmt] + _LEVEL_POP[level]
               + np.where(org == 0, _FIRST_ORG_POP, 0.0))
    log_pop -= log_pop.mean()
    catalog = pd.DataFrame({
        "talk_id": [f"{id_prefix}{id_start + i}" for i in range(n_talks)],
        "title": titles,
        "abstract": abstracts,
        "track": [TRACKS[t] for t in track],
        "level": [LEVELS[x] for x in level],
        "format": [FORMATS[x] for x in fmt],
        "organization": [ORGANIZATIONS[x] for x in org],
        "day": day.astype(np.int64),
        "slot": [SLOTS[x] for x in slot],
    })
    latent = Latent(event=event, z=z, log_pop=log_pop, track=track.astype(np.int64), subtopic=subtopic,
                    day=day.astype(np.int64))
    return catalog, latent


def subtopic_names(latent: Latent) -> list[str]:
    """The subtopic name of every talk (not a catalog column: it is the hidden label)."""
    return [SUBTOPICS[s][1] for s in latent.subtopic]


# ---------------------------------------------------------------------------------------------
# Oracle (exact next-click probabilities) and the vectorised sampler built on it
# ---------------------------------------------------------------------------------------------


class Oracle:
    """Exact next-click distribution of the generator, over the catalog order.

    The logit of talk ``j`` after a prefix is one dot product ``Q(prefix) . F_j`` with item features
    ``F_j = [z_j, log pop_j, onehot(track_j), onehot(day_j)]`` and query
    ``Q = [a z_l, c, b log share(prefix), -d |days - day_l|]``; talks in the prefix get probability 0.
    """

    def __init__(self, talk_ids: Sequence[str], z: np.ndarray, log_pop: np.ndarray, track: np.ndarray,
                 day: np.ndarray, n_tracks: int, model: ClickModel = ClickModel()):
        self.talk_ids = [str(t) for t in talk_ids]
        self.z = np.asarray(z, dtype=np.float64)
        self.log_pop = np.asarray(log_pop, dtype=np.float64)
        self.track = np.asarray(track, dtype=np.int64)
        self.day = np.asarray(day, dtype=np.int64)
        self.n_tracks = int(n_tracks)
        self.model = model
        n = len(self.talk_ids)
        if not (self.z.shape[0] == self.log_pop.shape[0] == self.track.shape[0] == self.day.shape[0] == n):
            raise ValueError("oracle arrays must all have one row per talk")
        self.n_days = int(self.day.max())
        self.index_of = {t: i for i, t in enumerate(self.talk_ids)}
        if len(self.index_of) != n:
            raise ValueError("duplicate talk ids in the oracle")
        self._days = np.arange(1, self.n_days + 1, dtype=np.float64)
        self.features = np.concatenate([
            self.z, self.log_pop[:, None], np.eye(self.n_tracks)[self.track],
            np.eye(self.n_days)[self.day - 1]], axis=1)
        self.features32 = np.ascontiguousarray(self.features, dtype=np.float32)
        pop = np.exp(self.log_pop)
        track_pop = np.bincount(self.track, weights=pop, minlength=self.n_tracks)
        self.first_probs = pop / (track_pop[self.track] * np.count_nonzero(track_pop))

    @classmethod
    def from_latent(cls, catalog: pd.DataFrame, latent: Latent, model: ClickModel = ClickModel()) -> "Oracle":
        return cls(catalog["talk_id"].astype(str).tolist(), latent.z, latent.log_pop, latent.track, latent.day,
                   len(TRACKS), model)

    @property
    def n_talks(self) -> int:
        return len(self.talk_ids)

    def indices(self, talk_ids: Iterable[str]) -> np.ndarray:
        try:
            return np.array([self.index_of[str(t)] for t in talk_ids], dtype=np.int64)
        except KeyError as err:
            raise KeyError(f"talk id {err.args[0]!r} is not in the oracle's catalog") from None

    # -- core -----------------------------------------------------------------------------------
    def _query(self, flat: np.ndarray, rows: np.ndarray, lengths: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Query vectors for prefixes given as flat talk indices with their row numbers (lengths >= 1)."""
        m = self.model
        n = len(lengths)
        counts = np.bincount(rows * self.n_tracks + self.track[flat], minlength=n * self.n_tracks)
        counts = counts.reshape(n, self.n_tracks).astype(np.float64)
        share = (counts + m.share_smoothing) / (lengths[:, None] + m.share_smoothing * self.n_tracks)
        return np.concatenate([
            m.a * self.z[last], np.full((n, 1), m.c), m.b * np.log(share),
            -m.d * np.abs(self._days[None, :] - self.day[last][:, None])], axis=1)

    def _logits(self, flat: np.ndarray, rows: np.ndarray, lengths: np.ndarray, last: np.ndarray,
                float32: bool = False) -> np.ndarray:
        q = self._query(flat, rows, lengths, last)
        if float32:
            logits = q.astype(np.float32) @ self.features32.T
        else:
            logits = q @ self.features.T
        logits[rows, flat] = -np.inf
        return logits

    def _probs_from_indices(self, prefixes: Sequence[np.ndarray]) -> np.ndarray:
        n = len(prefixes)
        out = np.empty((n, self.n_talks))
        lengths = np.array([len(p) for p in prefixes], dtype=np.int64)
        empty = lengths == 0
        out[empty] = self.first_probs
        keep = np.flatnonzero(~empty)
        if len(keep):
            sub = [np.asarray(prefixes[i], dtype=np.int64) for i in keep]
            flat = np.concatenate(sub)
            rows = np.repeat(np.arange(len(keep)), lengths[keep])
            last = np.array([p[-1] for p in sub], dtype=np.int64)
            logits = self._logits(flat, rows, lengths[keep].astype(np.float64), last)
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=1, keepdims=True)
            out[keep] = logits
        return out

    # -- public ---------------------------------------------------------------------------------
    def next_probs(self, prefix_talk_ids: Sequence[str]) -> np.ndarray:
        """P(next click = talk i | prefix) for every talk i in catalog order (sums to 1).

        An empty prefix gives the first-click distribution averaged over attendee interests."""
        return self._probs_from_indices([self.indices(prefix_talk_ids)])[0]

    def scores(self, prefixes: Sequence[Sequence[str]], batch_size: int = 2048) -> np.ndarray:
        """Next-click probabilities for a batch of prefixes: array (n_prefixes, n_talks)."""
        idx = [self.indices(p) for p in prefixes]
        out = np.empty((len(idx), self.n_talks))
        for start in range(0, len(idx), batch_size):
            out[start:start + batch_size] = self._probs_from_indices(idx[start:start + batch_size])
        return out

    def sample_next(self, prefixes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw the next click of each row of ``prefixes`` (int array (B, t >= 1) of talk indices).

        The generator's own sampler: float32 logits and Gumbel-max."""
        prefixes = np.asarray(prefixes, dtype=np.int64)
        b, t = prefixes.shape
        rows = np.repeat(np.arange(b), t)
        logits = self._logits(prefixes.ravel(), rows, np.full(b, float(t)), prefixes[:, -1], float32=True)
        u = rng.random(logits.shape, dtype=np.float32)
        with np.errstate(divide="ignore"):  # u == 0 gives a Gumbel of -inf: never chosen
            np.log(u, out=u)
            np.negative(u, out=u)
            np.log(u, out=u)  # u = -Gumbel
        logits -= u
        return logits.argmax(axis=1)

    def sample_first(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """First clicks: track from a sparse Dirichlet interest, then a talk of it by popularity."""
        present = np.flatnonzero(np.bincount(self.track, minlength=self.n_tracks) > 0)
        theta = rng.dirichlet(np.full(len(present), self.model.interest_alpha), size=n)
        theta_cum = np.cumsum(theta, axis=1)
        u = rng.random(n) * theta_cum[:, -1]
        chosen = present[np.minimum((theta_cum < u[:, None]).sum(axis=1), len(present) - 1)]
        out = np.empty(n, dtype=np.int64)
        u2 = rng.random(n)
        pop = np.exp(self.log_pop)
        for t in present:
            members = np.flatnonzero(self.track == t)
            cum = np.cumsum(pop[members])
            who = np.flatnonzero(chosen == t)
            pos = np.searchsorted(cum, u2[who] * cum[-1], side="right")
            out[who] = members[np.minimum(pos, len(members) - 1)]
        return out

    def log_likelihood(self, clicks: pd.DataFrame, min_position: int = 1) -> np.ndarray:
        """log P(click | prefix) of every click at 0-based position >= min_position of each session.

        ``clicks`` must be sorted by session then time (as :func:`load_clicks` returns them)."""
        prefixes, targets = session_prefixes(clicks, min_position)
        out = np.empty(len(targets))
        for start in range(0, len(targets), 2048):
            p = self.scores(prefixes[start:start + 2048])
            out[start:start + 2048] = np.log(p[np.arange(len(p)), self.indices(targets[start:start + 2048])])
        return out

    def recall_at_k(self, clicks: pd.DataFrame, k: int = 10, min_position: int = 1,
                    last_only: bool = False) -> float:
        """Share of next clicks (position >= min_position, or each session's last click) in the top k."""
        prefixes, targets = session_prefixes(clicks, min_position, last_only=last_only)
        hits = 0
        for start in range(0, len(targets), 2048):
            p = self.scores(prefixes[start:start + 2048])
            tgt = self.indices(targets[start:start + 2048])
            p_tgt = p[np.arange(len(p)), tgt]
            hits += int(((p > p_tgt[:, None]).sum(axis=1) < k).sum())
        return hits / max(len(targets), 1)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, talk_ids=np.array(self.talk_ids, dtype=str), z=self.z, log_pop=self.log_pop,
                            track=self.track, day=self.day, n_tracks=np.int64(self.n_tracks),
                            model=np.array(json.dumps(self.model.to_dict())))
        return path

    @classmethod
    def load(cls, path: str | Path, catalog: pd.DataFrame | None = None) -> "Oracle":
        """Read an oracle; with ``catalog`` its arrays are put in that catalog's order (same talks)."""
        with np.load(path, allow_pickle=False) as f:
            ids = [str(t) for t in f["talk_ids"]]
            arrays = {k: f[k] for k in ("z", "log_pop", "track", "day")}
            n_tracks = int(f["n_tracks"])
            model = ClickModel(**json.loads(str(f["model"])))
        if catalog is not None:
            wanted = catalog["talk_id"].astype(str).tolist()
            if set(wanted) != set(ids) or len(wanted) != len(ids):
                missing = sorted(set(wanted) - set(ids))[:5]
                extra = sorted(set(ids) - set(wanted))[:5]
                raise ValueError(f"{path}: the oracle's talks differ from the catalog's "
                                 f"(in catalog only: {missing}, in oracle only: {extra})")
            pos = {t: i for i, t in enumerate(ids)}
            order = np.array([pos[t] for t in wanted])
            ids = wanted
            arrays = {k: v[order] for k, v in arrays.items()}
        return cls(ids, arrays["z"], arrays["log_pop"], arrays["track"], arrays["day"], n_tracks, model)


def session_prefixes(clicks: pd.DataFrame, min_position: int = 1,
                     last_only: bool = False) -> tuple[list[list[str]], list[str]]:
    """(prefix, next click) pairs of sorted clicks: every position >= min_position, or the last only."""
    prefixes, targets = [], []
    for items in clicks.groupby("session_id", sort=False)["talk_id"].agg(list):
        positions = [len(items) - 1] if last_only else range(min_position, len(items))
        for pos in positions:
            if pos >= min_position:
                prefixes.append(items[:pos])
                targets.append(items[pos])
    return prefixes, targets


def generate_sessions(catalog: pd.DataFrame, latent: Latent, n_sessions: int, seed: int,
                      start: str | pd.Timestamp = "2025-02-03", days: float = 60.0,
                      model: ClickModel = ClickModel(), session_prefix: str | None = None,
                      batch_size: int = 2048, time_resolution_s: int = 1) -> pd.DataFrame:
    """Sessions drawn from the click model: DataFrame (session_id, talk_id, timestamp) sorted by
    session then time. Session ids are ``f"{session_prefix}{i:06d}"`` (default prefix: ``"<event>-"``).
    Sessions start uniformly within ``days`` days after ``start``; steps are sampled for a batch of
    ``batch_size`` sessions at once.

    ``time_resolution_s`` rounds every timestamp down to a multiple of that many seconds, as logs
    with coarse clocks or batched uploads do: with more than ~10 s, clicks of a session share
    timestamps (tied clicks). Rows stay in the order they were drawn, but a tie no longer says
    which click came first: whatever reads them orders ties by the click order rule (talk id)."""
    if int(time_resolution_s) < 1:
        raise ValueError("time_resolution_s must be >= 1")
    oracle = Oracle.from_latent(catalog, latent, model)
    n_talks = oracle.n_talks
    if n_talks < 2 or n_sessions < 1:
        raise ValueError("need at least 2 talks and 1 session to generate sessions")
    rng = np.random.default_rng([int(seed), 15485863])
    p = 1.0 / (model.mean_length - 1.0)
    lengths = np.minimum(1 + rng.geometric(p, size=n_sessions), min(model.max_length, n_talks))
    first = oracle.sample_first(n_sessions, rng)
    start_s = np.floor(rng.uniform(0.0, days * 86400.0, size=n_sessions)).astype(np.int64)
    gaps = rng.integers(model.min_gap_s, model.max_gap_s + 1, size=int(lengths.sum()))

    clicked = np.full((n_sessions, int(lengths.max())), -1, dtype=np.int64)
    clicked[:, 0] = first
    for b0 in range(0, n_sessions, batch_size):
        sl = slice(b0, min(b0 + batch_size, n_sessions))
        block, block_len = clicked[sl], lengths[sl]  # block is a view: writes go into `clicked`
        for t in range(1, int(block_len.max())):
            active = np.flatnonzero(block_len > t)
            block[active, t] = oracle.sample_next(block[active, :t], rng)

    mask = np.arange(clicked.shape[1])[None, :] < lengths[:, None]
    talk_idx = clicked[mask]  # row-major: session by session, in click order
    sess = np.repeat(np.arange(n_sessions), lengths)
    session_first = np.r_[0, np.cumsum(lengths)[:-1]]  # flat position of each session's first click
    gaps[session_first] = 0
    offsets = np.cumsum(gaps)
    session_base = offsets[session_first]
    seconds = start_s[sess] + offsets - session_base[sess]
    seconds = seconds // int(time_resolution_s) * int(time_resolution_s)
    timestamps = pd.Timestamp(start).to_datetime64().astype("datetime64[ns]") + seconds.astype("timedelta64[s]")
    prefix = f"{latent.event}-" if session_prefix is None else session_prefix
    width = max(6, len(str(n_sessions)))
    ids = np.array([f"{prefix}{i:0{width}d}" for i in range(n_sessions)], dtype=object)
    return pd.DataFrame({
        "session_id": ids[sess],
        "talk_id": np.array(oracle.talk_ids, dtype=object)[talk_idx],
        "timestamp": pd.to_datetime(timestamps.astype("datetime64[ns]")),
    })


# ---------------------------------------------------------------------------------------------
# Two events and their files
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EventData:
    name: str
    catalog: pd.DataFrame
    clicks: pd.DataFrame
    latent: Latent
    oracle: Oracle


@dataclasses.dataclass
class Events:
    """The training event ("spring") and the new event with a disjoint catalog ("fall")."""

    spring: EventData
    fall: EventData
    seed: int
    model: ClickModel

    def __getitem__(self, name: str) -> EventData:
        return {"spring": self.spring, "fall": self.fall}[name]

    def items(self) -> list[tuple[str, EventData]]:
        return [("spring", self.spring), ("fall", self.fall)]


EVENT_SETTINGS = {
    "spring": {"id_prefix": "S", "id_start": 50001, "start": "2025-01-20"},
    "fall": {"id_prefix": "F", "id_start": 30001, "start": "2025-08-04"},
}


def generate_events(seed: int, n_talks: int = 5000, n_sessions: int = 50000, n_sessions_new_event: int = 10000,
                    n_talks_new_event: int | None = None, model: ClickModel = ClickModel(),
                    days: float = 60.0, time_resolution_s: int = 1) -> Events:
    """Both events of the series from one seed (shared topic geometry, disjoint talk ids).
    ``time_resolution_s``: see :func:`generate_sessions` (coarse values give tied timestamps)."""
    seeds = [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(4)]
    out = {}
    sizes = {"spring": (n_talks, n_sessions), "fall": (n_talks_new_event or n_talks, n_sessions_new_event)}
    for k, name in enumerate(["spring", "fall"]):
        st = EVENT_SETTINGS[name]
        catalog, latent = generate_catalog(sizes[name][0], seeds[2 * k], event=name, id_prefix=st["id_prefix"],
                                           id_start=st["id_start"], world_seed=seed)
        clicks = generate_sessions(catalog, latent, sizes[name][1], seeds[2 * k + 1], start=st["start"],
                                   days=days, model=model, time_resolution_s=time_resolution_s)
        out[name] = EventData(name, catalog, clicks, latent, Oracle.from_latent(catalog, latent, model))
    return Events(out["spring"], out["fall"], int(seed), model)


def write_event(event_data: EventData, folder: str | Path) -> dict[str, Path]:
    """Write catalog.parquet, clicks.parquet and oracle.npz into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"catalog": folder / "catalog.parquet", "clicks": folder / "clicks.parquet",
             "oracle": folder / "oracle.npz"}
    event_data.catalog.to_parquet(paths["catalog"], index=False)
    event_data.clicks.to_parquet(paths["clicks"], index=False)
    event_data.oracle.save(paths["oracle"])
    return paths


# ---------------------------------------------------------------------------------------------
# Loading and validation (generated files and user files go through the same path)
# ---------------------------------------------------------------------------------------------


class DataValidationError(ValueError):
    """Problems found in an input file; ``problems`` lists them all, the message shows the first 20.

    Rows are 1-based data rows in file order (the CSV header is not counted: data row 1 is line 2)."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = list(problems)
        shown = self.problems[:MAX_PROBLEMS]
        head = (f"{self.path}: {len(self.problems)} problem(s) "
                f"(rows are 1-based data rows, header not counted)")
        lines = [head] + [f"  - {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        super().__init__("\n".join(lines))


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return "csv"
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    raise DataValidationError(path, [f"{path}: unsupported file type (use .csv or .parquet)"])


def _read(path: str | Path) -> tuple[pd.DataFrame, str, Path]:
    path = Path(path)
    kind = _file_kind(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if kind == "csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    else:
        frame = pd.read_parquet(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.reset_index(drop=True), kind, path


def _where(path: Path, row: int | str, column: str) -> str:
    return f"{path.name} row {row}, column '{column}'"


def _missing_columns(frame: pd.DataFrame, required: list[str], path: Path, kind: str) -> list[str]:
    header = "header (line 1)" if kind == "csv" else "schema"
    found = ", ".join(map(repr, frame.columns)) or "none"
    return [f"{path.name} {header}, column '{c}': missing column (found: {found})"
            for c in required if c not in frame.columns]


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if value is pd.NaT or (isinstance(value, str) and not value.strip()):
        return True
    try:
        return bool(pd.isna(value)) if not isinstance(value, (list, tuple, np.ndarray)) else False
    except (TypeError, ValueError):
        return False


def _as_str(value: Any) -> str:
    if _is_blank(value):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _parse_day(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_)) or _is_blank(value):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else None
    text = str(value).strip()
    if re.fullmatch(r"[+]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+]?\d+\.0*", text):
        return int(float(text))
    return None


_SLOT_RE = re.compile(r"^([01]?\d|2[0-3]):[0-5]\d$")


def load_catalog(path: str | Path) -> pd.DataFrame:
    """Read and validate a catalog (CSV or parquet by suffix). Raises :class:`DataValidationError`.

    Only ``talk_id`` (or, when the file has no ``talk_id`` column, ``id``) and ``title`` are
    required. Returns every documented column first (talk_id, title, abstract, track, level, format,
    organization, slot as str, ``""`` when empty or absent; day as int64, or as pandas' nullable
    Int64 with missing values when some days are empty or the column is absent), then the file's
    other columns, in file order. ``attrs["talk_id_column"]`` names the file's talk id column."""
    frame, kind, path = _read(path)
    id_col = next((c for c in ["talk_id"] + TALK_ID_ALIASES if c in frame.columns), "talk_id")
    problems = []
    if id_col not in frame.columns:
        header = "header (line 1)" if kind == "csv" else "schema"
        found = ", ".join(map(repr, frame.columns)) or "none"
        problems.append(f"{path.name} {header}, column 'talk_id': missing column (or 'id'; found: {found})")
    problems += _missing_columns(frame, ["title"], path, kind)
    out = pd.DataFrame(index=frame.index)
    for col in CATALOG_TEXT_COLUMNS:
        source = id_col if col == "talk_id" else col
        out[col] = [_as_str(v) for v in frame[source].tolist()] if source in frame.columns else ""
    if id_col in frame.columns:
        first_row: dict[str, int] = {}
        dup_rows: dict[str, list[int]] = {}
        for i, tid in enumerate(out["talk_id"].tolist(), start=1):
            if not tid:
                problems.append(f"{_where(path, i, id_col)}: empty talk id")
            elif tid in first_row:
                dup_rows.setdefault(tid, [first_row[tid]]).append(i)
            else:
                first_row[tid] = i
        for tid, rows in dup_rows.items():
            listed = ", ".join(map(str, rows[:-1])) + f" and {rows[-1]}"
            problems.append(f"{path.name} rows {listed}, column '{id_col}': duplicate talk id {tid!r}")
    if "title" in frame.columns:
        for i, title in enumerate(out["title"].tolist(), start=1):
            if not title:
                problems.append(f"{_where(path, i, 'title')}: empty title")
    days: list[int | None] = [None] * len(frame)
    if "day" in frame.columns:
        for i, v in enumerate(frame["day"].tolist(), start=1):
            if _is_blank(v):
                continue  # an empty day is a missing value
            d = _parse_day(v)
            if d is None or d < 1:
                problems.append(f"{_where(path, i, 'day')}: day must be an integer >= 1 (or empty), got {v!r}")
            else:
                days[i - 1] = d
    for i, s in enumerate(out["slot"].tolist(), start=1):
        if s and not _SLOT_RE.match(s):
            problems.append(f"{_where(path, i, 'slot')}: slot must be 'HH:MM' (or empty), got {s!r}")
    if problems:
        raise DataValidationError(path, problems)
    if all(d is not None for d in days):
        out["day"] = np.array(days, dtype=np.int64)
    else:
        out["day"] = pd.array(days, dtype="Int64")
    extra = [c for c in frame.columns if c not in CATALOG_COLUMNS and c != id_col]
    for c in extra:
        out[c] = frame[c]
    out = out[CATALOG_COLUMNS + extra].reset_index(drop=True)
    out.attrs["talk_id_column"] = id_col  # the file's name for it, for later messages
    return out


def _parse_timestamps(values: pd.Series) -> pd.Series:
    """datetime64[ns] (UTC, tz-naive) or NaT per value; numbers are not accepted as timestamps."""
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = values
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        return ts.astype("datetime64[ns]")
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    obj = values.astype(object)
    numeric = obj.map(lambda v: isinstance(v, (int, float, np.integer, np.floating, bool)))
    text = obj.where(~numeric, None).map(lambda v: v.strip() if isinstance(v, str) else v)
    text = text.where(text != "", None)
    try:
        ts = pd.to_datetime(text, errors="coerce", utc=True)
    except (ValueError, TypeError, OverflowError):  # a value pandas cannot even coerce: go one by one
        ts = pd.to_datetime(text.map(_one_timestamp), utc=True)
    return ts.dt.tz_localize(None).astype("datetime64[ns]")


def _one_timestamp(value: Any) -> Any:
    try:
        return pd.to_datetime(value, utc=True)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


def load_clicks(path: str | Path, catalog: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read and validate clicks (CSV or parquet) against a catalog (a DataFrame from
    :func:`load_catalog`, or its path). Returns (clicks, report): clicks has session_id and talk_id as
    str and timestamp as datetime64[ns] (UTC if the file had offsets), sorted by session id, then time,
    then talk id (the click order rule of training and serving); sessions with a single click are dropped and counted in the report."""
    if not isinstance(catalog, pd.DataFrame):
        catalog = load_catalog(catalog)
    frame, kind, path = _read(path)
    problems = _missing_columns(frame, CLICK_COLUMNS, path, kind)
    known = set(catalog["talk_id"].astype(str))
    out = pd.DataFrame(index=frame.index)
    if "session_id" in frame.columns:
        out["session_id"] = [_as_str(v) for v in frame["session_id"].tolist()]
        for i in np.flatnonzero(out["session_id"].to_numpy() == ""):
            problems.append(f"{_where(path, i + 1, 'session_id')}: empty session id")
    if "talk_id" in frame.columns:
        out["talk_id"] = [_as_str(v) for v in frame["talk_id"].tolist()]
        ids = out["talk_id"].to_numpy()
        for i in np.flatnonzero(~pd.Series(ids).isin(known).to_numpy()):
            what = "empty talk id" if not ids[i] else f"talk id {ids[i]!r} is not in the catalog"
            problems.append(f"{_where(path, i + 1, 'talk_id')}: {what}")
    if "timestamp" in frame.columns:
        ts = _parse_timestamps(frame["timestamp"])
        raw = frame["timestamp"].tolist()
        for i in np.flatnonzero(ts.isna().to_numpy()):
            problems.append(f"{_where(path, i + 1, 'timestamp')}: unparsable timestamp {raw[i]!r} "
                            "(expected ISO-8601 text or a datetime)")
        out["timestamp"] = ts.to_numpy()
    if problems:
        raise DataValidationError(path, problems)

    extra = [c for c in frame.columns if c not in CLICK_COLUMNS]
    for c in extra:
        out[c] = frame[c]
    out = out[CLICK_COLUMNS + extra]
    n_rows = len(out)
    # THE click order of training and serving (gtcrec.serving.operators.click_order): by session
    # (id text), then time, then talk id text. Imported here: that module loads Merlin (seconds).
    from gtcrec.serving.operators import click_order, text_rank

    order = click_order(text_rank(out["session_id"]), out["timestamp"].to_numpy().astype(np.int64),
                        text_rank(out["talk_id"]))
    out = out.iloc[order].reset_index(drop=True)
    sizes = out.groupby("session_id", sort=False)["talk_id"].transform("size")
    single = sizes == 1
    n_sessions_in_file = int(out["session_id"].nunique())
    out = out[~single].reset_index(drop=True)
    repeated = int(out.duplicated(["session_id", "talk_id"]).sum())
    report = {
        "file": str(path),
        "n_rows": n_rows,
        "n_sessions_in_file": n_sessions_in_file,
        "dropped_single_click_sessions": int(single.sum()),
        "n_clicks": int(len(out)),
        "n_sessions": int(out["session_id"].nunique()),
        "n_talks_clicked": int(out["talk_id"].nunique()),
        "n_catalog_talks": int(len(catalog)),
        "n_repeated_clicks": repeated,
        "first_timestamp": str(out["timestamp"].min()) if len(out) else None,
        "last_timestamp": str(out["timestamp"].max()) if len(out) else None,
    }
    return out, report
