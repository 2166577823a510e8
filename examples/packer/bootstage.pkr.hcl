# An image with bootstage installed, for Amazon Linux 2023 and Debian 12, x86_64 and arm64:
#
#   scripts/build-packages.sh                       # target/packages: four packages, SHA256SUMS
#   packer init examples/packer
#   packer build -var packages_dir=target/packages examples/packer/bootstage.pkr.hcl
#   packer build -only='amazon-ebs.al2023-arm64' …  # one of the four
#
# Each build uploads the packages and their SHA256SUMS, then runs
# examples/image/install-bootstage.sh, which checks the package of the image's format and
# architecture against SHA256SUMS, installs it (enabling bootstage.target, starting
# nothing) and installs the watch-mode drop-in. Add your app in a provisioner after it.
# The last provisioner, `bootstage image prepare`, removes what a boot of the build
# instance left (markers, records, synced trees; nothing when it never booted with
# bootstage) and lists it, so every instance of the image boots as a first boot: keep it
# last.
# tests/it/cloudformation.rs parses this file (python-hcl2) and checks these steps.

packer {
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "packages_dir" {
  type        = string
  default     = "target/packages"
  description = "The output of scripts/build-packages.sh: the four packages and SHA256SUMS."
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "app_unit" {
  type        = string
  default     = "myapp.service"
  description = "The unit the watch drop-in reloads after a synced change."
}

variable "ami_prefix" {
  type    = string
  default = "bootstage"
}

locals {
  stamp = formatdate("YYYYMMDD-hhmmss", timestamp())
}

source "amazon-ebs" "al2023-x86_64" {
  region        = var.region
  instance_type = "t3.small"
  ssh_username  = "ec2-user"
  ami_name      = "${var.ami_prefix}-al2023-x86_64-${local.stamp}"
  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-kernel-*-x86_64"
      architecture        = "x86_64"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }
  imds_support = "v2.0"
}

source "amazon-ebs" "al2023-arm64" {
  region        = var.region
  instance_type = "t4g.small"
  ssh_username  = "ec2-user"
  ami_name      = "${var.ami_prefix}-al2023-arm64-${local.stamp}"
  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-kernel-*-arm64"
      architecture        = "arm64"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }
  imds_support = "v2.0"
}

source "amazon-ebs" "debian12-x86_64" {
  region        = var.region
  instance_type = "t3.small"
  ssh_username  = "admin"
  ami_name      = "${var.ami_prefix}-debian12-x86_64-${local.stamp}"
  source_ami_filter {
    filters = {
      name                = "debian-12-amd64-*"
      architecture        = "x86_64"
      virtualization-type = "hvm"
    }
    owners      = ["136693071363"] # Debian's own account
    most_recent = true
  }
  imds_support = "v2.0"
}

source "amazon-ebs" "debian12-arm64" {
  region        = var.region
  instance_type = "t4g.small"
  ssh_username  = "admin"
  ami_name      = "${var.ami_prefix}-debian12-arm64-${local.stamp}"
  source_ami_filter {
    filters = {
      name                = "debian-12-arm64-*"
      architecture        = "arm64"
      virtualization-type = "hvm"
    }
    owners      = ["136693071363"]
    most_recent = true
  }
  imds_support = "v2.0"
}

build {
  sources = [
    "source.amazon-ebs.al2023-x86_64",
    "source.amazon-ebs.al2023-arm64",
    "source.amazon-ebs.debian12-x86_64",
    "source.amazon-ebs.debian12-arm64",
  ]

  provisioner "shell" {
    inline = ["mkdir -p /tmp/bootstage-packages"]
  }

  # All four packages and SHA256SUMS (a directory's contents: the trailing slash); the
  # script picks the one this image takes.
  provisioner "file" {
    source      = "${var.packages_dir}/"
    destination = "/tmp/bootstage-packages"
  }

  provisioner "file" {
    source      = "${path.root}/../image/install-bootstage.sh"
    destination = "/tmp/install-bootstage.sh"
  }

  # Checks the package against SHA256SUMS before installing it; fails the build if not.
  provisioner "shell" {
    inline = [
      "sudo APP_UNIT=${var.app_unit} sh /tmp/install-bootstage.sh /tmp/bootstage-packages",
      "rm -rf /tmp/bootstage-packages /tmp/install-bootstage.sh",
    ]
  }

  # Your app's provisioners go here.

  # The last step before the image is captured: nothing of this instance travels.
  provisioner "shell" {
    inline = ["sudo bootstage image prepare"]
  }
}
