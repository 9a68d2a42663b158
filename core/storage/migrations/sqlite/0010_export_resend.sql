-- Dead letters an operator asked to send again (after the target was fixed:
-- a field type changed, a bucket created). The exporter sends them before its
-- queue; accepted, they leave; refused again, the flag is cleared and the new
-- answer kept.
ALTER TABLE export_dead ADD COLUMN resend INTEGER NOT NULL DEFAULT 0;
CREATE INDEX export_dead_resend ON export_dead (target, id) WHERE resend = 1;
