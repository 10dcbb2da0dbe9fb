"""The toy-world family's stage trainers (VAE, text encoder, teacher, student) the lab's recipes call."""
